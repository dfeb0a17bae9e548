"""Texts of the list application's confirmations, replies and notices (``str.format`` fields)."""

CONFIRM = """\
Someone (hopefully you) asked to {action}.

To confirm, reply to this message (keep the subject), or send a message to
    {confirm}
If you did not ask for this, ignore this message: nothing happens without
your confirmation, and the request expires.

For help, write to {request} with the word "help".
"""

HELP = """\
This is the command address of the list {list}.

Commands go in the subject or at the start of the body, one per line:

    subscribe              join the list (you will be asked to confirm)
    unsubscribe            leave the list (you will be asked to confirm)
    change-address NEW     move your subscription to the address NEW
                           (NEW is asked to confirm)
    digest on|plain|off    get the posts collected in a MIME (on) or plain
                           text digest, or one by one again (off)
    confirm TOKEN          confirm a request
    help                   this text

You can also write to {join} to subscribe, and to {leave} to unsubscribe.
Posts go to {list}. The owners are at {owner}.
"""

RESULTS = """\
The results of your commands to {list}:

{results}

For help, send "help" to {request}.
"""

HELD = """\
A post to {list} is held for approval.

    From:    {author}
    Subject: {subject}
    Reason:  {reason}

To approve it, reply to this message (keep the subject) or write to
    {confirm}
To reject it, reply with the word "reject" on the first line (the rest of the
line is sent to the author as the reason). To discard it silently, reply with
the word "discard". Or on the list server:
    listgate held approve|reject|discard {list} {token}
The held post is attached. It expires unless approved.
"""

REJECTED = """\
Your message to {list} with the subject
    {subject}
was rejected by the list's moderators or its posting policy.

Reason: {reason}
"""

WELCOME = """\
Welcome to {list}.

Post by writing to {list}. To unsubscribe, write to {leave}.
"""

GOODBYE = """\
You are no longer subscribed to {list}.
"""

ADDRESS_CHANGED = """\
The subscription to {list} of {old} moved to {new}.
"""

OWNER_EVENT = """\
{address} {event} {list}.
"""

RE_ENABLED = """\
Delivery of {list} to {address} is enabled again.
"""

UNKNOWN_TOKEN = """\
The confirmation token in your message to {list} is unknown or has expired.
Nothing was done. Requests expire after a few days; please make the request again.
"""

RATE_LIMITED = ("too many messages went to {address} from this list recently; nothing was done. "
                "Please try again tomorrow.")

OWNER_MEMBERSHIP = """\
The members of {list} were changed by the list's administrator
(listgate members {command}):

{changes}
"""
