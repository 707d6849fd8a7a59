# ruff: noqa: E402 - this one file holds jobs/tasks.py and jobs/apps.py, each with its imports
"""Django: workers start in AppConfig.ready(), only in processes that ask for them."""

# --8<-- [start:tasks]
# jobs/tasks.py: the queue and its handlers, imported by views and by apps.py
from dbjobq import JobContext, JobQueue

queue = JobQueue("sqlite:///workers_django.db")


@queue.handler("send_welcome")
def send_welcome(ctx: JobContext) -> dict[str, str]:
    return {"sent_to": ctx.payload["email"]}


# --8<-- [end:tasks]
# --8<-- [start:apps]
# jobs/apps.py
import atexit
import os

from django.apps import AppConfig

from dbjobq import Worker


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        self.workers: list[Worker] = []
        # Only processes started with JOB_WORKERS=n run workers: not manage.py
        # migrate, shell or test, which load the apps too.
        count = int(os.environ.get("JOB_WORKERS", "0"))
        if count < 1:
            return
        from jobs.tasks import queue  # registers the handlers

        self.workers = [Worker(queue) for _ in range(count)]
        for worker in self.workers:
            worker.start()
        atexit.register(Worker.stop_all, self.workers)


# --8<-- [end:apps]

# The rest only makes this file runnable on its own: the file stands in for the jobs
# package and its modules, and settings.configure() for a settings module.
if __name__ == "__main__":
    import sys
    import time

    import django
    from django.apps import apps
    from django.conf import settings

    for name in ("jobs", "jobs.apps", "jobs.tasks"):
        sys.modules[name] = sys.modules[__name__]
    os.environ["JOB_WORKERS"] = "2"  # as the web server's environment would set it
    settings.configure(INSTALLED_APPS=["jobs.apps.JobsConfig"])
    django.setup()  # calls JobsConfig.ready(): two workers start

    workers = apps.get_app_config("jobs").workers
    assert len(workers) == 2 and all(worker.is_alive for worker in workers)
    job_id = queue.enqueue("send_welcome", {"email": "ada@example.com"})
    deadline = time.monotonic() + 10
    while not (job := queue.get_job(job_id)).status.is_finished:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    print(job.status, job.result)  # completed {'sent_to': 'ada@example.com'}
    assert job.status == "completed"
