"""Flask: an app factory that starts workers; they are stopped when the process exits."""

import atexit
import time
from typing import Any

from flask import Flask, request

from dbjobq import JobContext, JobQueue, Worker


def send_welcome(ctx: JobContext) -> dict[str, str]:
    return {"sent_to": ctx.payload["email"]}


def create_app(database_url: str = "sqlite:///workers_flask.db", workers: int = 2) -> Flask:
    app = Flask(__name__)
    queue = JobQueue(database_url)
    queue.register("send_welcome", send_welcome)

    started = [Worker(queue) for _ in range(workers)]
    for worker in started:
        worker.start()
    atexit.register(Worker.stop_all, started)  # at interpreter exit, after the server returns
    app.extensions["dbjobq"] = {"queue": queue, "workers": started}

    @app.post("/signup")
    def signup() -> dict[str, str]:
        job_id = queue.enqueue("send_welcome", {"email": request.get_json()["email"]})
        return {"job_id": job_id}

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> dict[str, Any]:
        job = queue.get_job(job_id)
        return {"status": job.status.value, "result": job.result}

    return app


if __name__ == "__main__":
    app = create_app()
    client = app.test_client()
    job_id = client.post("/signup", json={"email": "ada@example.com"}).get_json()["job_id"]
    deadline = time.monotonic() + 10
    while (state := client.get(f"/jobs/{job_id}").get_json())["status"] != "completed":
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    print(state)  # {'result': {'sent_to': 'ada@example.com'}, 'status': 'completed'}
    assert all(worker.is_alive for worker in app.extensions["dbjobq"]["workers"])
