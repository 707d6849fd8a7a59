"""Bad input is refused before anything is written, with a typed error."""

import math

from dbjobq import DBJobQError, InvalidJobError, JobQueue, PayloadError

queue = JobQueue("sqlite:///errors_at_enqueue.db")

try:
    queue.enqueue("report", {"ratio": math.nan})
except PayloadError as error:
    print(error)  # payload is not strict JSON: ['ratio'] is nan; NaN and Infinity have no JSON form

try:
    queue.enqueue("report", delay=-5)
except InvalidJobError as error:
    print(error)  # delay must be a finite number zero or more, got -5

try:
    queue.enqueue("", {})
except ValueError as error:  # InvalidJobError is also a ValueError (and a TypeError)
    print(type(error).__name__, isinstance(error, DBJobQError))  # InvalidJobError True
    print(error)  # job type must not be empty

assert queue.list_jobs() == []  # nothing was written
