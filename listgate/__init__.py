"""listgate: mailing lists run at the MTA.

Layout (one job per module):

* ``config``   strict YAML site/list configuration, defaults in one place
* ``clock``    the one clock (tests move time for every process)
* ``queue``    qfiles and switchboards (durable single-file queue)
* ``store``    per-list store: members, bounce info, evidence, events, pending records
* ``addresses``the list address scheme (roles, suffixes)
* ``verp``     signed VERP addresses and probe addresses
* ``routing``  recipient decisions shared by milter, policy server and inject
* ``bounce``   classification (``classify``) and the bounce life cycle (``engine``)
* ``milter``   pymilter front end;  ``policy`` policy-delegation front end
* ``inject``   the Exim pipe hand-off (and the milter's end-of-message core)
* ``runner``   queue runners: posts, commands, delivery, periodic tasks
* ``cli``      the ``listgate`` command
"""
__version__ = "0.2.0"
