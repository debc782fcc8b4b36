"""Work: a request turned into an activity and seen through.

The one dispatch service every entry point uses (``service``), executing actions over the API
(``execution``), the human approval gate (``approvals``), workflow runs (``runs``), takeover by a
person (``takeover``) and steering an activity from outside its conversation (``steering``). It
may import every other room of ``dispatch``; none imports it.
"""
