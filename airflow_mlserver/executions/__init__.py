"""What every place that watches batch executions shares: when a wait is over (:mod:`.waiting`), how long a
server that cannot be read is waited out (:mod:`.outage`), how progress reads in the logs (:mod:`.progress`), the
event a deferral ends with (:mod:`.events`) and the wait in a worker's thread (:mod:`.polling`).

A neutral layer: it imports the client (and the hook only for types); the operators, the sensor, the trigger
and the UI import it, and it imports none of them.
"""
