"""Work: a request turned into an activity and seen through.

The one dispatch service every entry point uses (``service``), executing actions over the API
(``execution``), the human approval gate (``approvals``), workflow runs (``runs``), takeover by a
person (``takeover``) and steering an activity from outside its conversation (``steering``). It
may import every other room of ``dispatch``; none imports it.

Every entry opens its activity through ``ActivityLog.open``, checks the catalog's payload schema
and ``may_request``, and asks approvers through ``ApprovalService.gate``. Where entries differ,
and why (refused request / refused payload / priority):

- **chat**: recorded ``failed`` with a ``denied`` event and the sender told (they asked, they
  get an answer) / a question (the system's ``clarify`` activity) asks for what is missing or
  wrong, and the request is recorded once it is whole (a person is typing) / the action's.
- **operator API**: ``403``, nothing recorded (a program reads the status code) / ``422``
  naming the field, nothing recorded / the request's, else the action's.
- **workflow step**: the step recorded ``failed`` (``forbidden``) and the run fails / the step
  recorded ``failed`` (``payload``, ``template``): the run has begun, its record must say where
  it stopped / the step's, else the action's.
"""
