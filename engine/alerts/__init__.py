"""Alerts: rules on a channel's flow and critical results, told to HTTP targets, with escalation.

    config.py     the channel's ``alerts:`` (targets, rules, critical results), pydantic
    rules.py      whether a rule holds now: one indexed query each (silence, error_rate, dead_letters,
                  queue_age)
    critical.py   critical Observations of a mapped bundle; the pipeline hook that records their alerts
    book.py       the ``alerts`` table's verbs (raise, resolve, acknowledge, escalate, remind) and the
                  notification outbox
    evaluator.py  the thread of ``interlink run``: rules → alerts, escalation, notices POSTed (signed)
    (engine/api/admin/alerts.py: ``GET /api/v1/alerts``, ``POST /api/v1/alerts/{id}/ack``)

An alert is ``open`` when raised, ``acknowledged`` when an operator takes it (no reminder, no
escalation), ``escalated`` when a critical result stayed unacknowledged for ``escalate_after_min``,
``resolved`` when a rule's condition cleared. Nothing here logs or stores a value from a message: the
alert row holds ids, codes and figures; only a critical result's notice to its configured target carries
the Observation and its patient's identifiers (see evaluator.py).

This package imports nothing from its modules here: the channel model imports ``engine.alerts.config``.
"""
