"""The record: what happened, as the database keeps it.

Tables (``models``), the engine and sessions (``db``), claims on rows (``claims``), messages as
every channel normalizes them (``messages``), storing them (``inbound``: one path
for both databases, ``intake``: group commit for webhooks, ``store``: reading them back),
users and their identities (``users``), the activity log and its events (``activities``, ``feed``),
a conversation's turns (``turns``: what holds an activity back, which message or activity
comes next),
replies written with the activity that produced them (``outbox``) and on their way to the
channel, each at most once (``delivery``), the deployment's secret
(``keys``) and figures read back (``stats``). It imports ``dispatch.infra`` and
``dispatch.language`` only.
"""
