"""FastAPI: workers start with the app and stop when it shuts down."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from dbjobq import JobContext, JobQueue, Worker

queue = JobQueue("sqlite:///workers_fastapi.db")


@queue.handler("send_welcome")
def send_welcome(ctx: JobContext) -> dict[str, str]:
    return {"sent_to": ctx.payload["email"]}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    workers = [Worker(queue) for _ in range(2)]
    for worker in workers:
        worker.start()
    app.state.workers = workers
    try:
        yield
    finally:
        await asyncio.to_thread(Worker.stop_all, workers)  # stop() blocks: keep it off the loop


app = FastAPI(lifespan=lifespan)


class Signup(BaseModel):
    email: str


@app.post("/signup")
def signup(body: Signup) -> dict[str, str]:  # a plain def: FastAPI runs it in a thread
    job_id = queue.enqueue("send_welcome", {"email": body.email})
    return {"job_id": job_id}


@app.get("/jobs/{job_id}")
def job_status(job_id: str) -> dict[str, Any]:
    job = queue.get_job(job_id)
    return {"status": job.status.value, "result": job.result}


if __name__ == "__main__":
    with TestClient(app) as client:  # runs the lifespan: the workers start here
        job_id = client.post("/signup", json={"email": "ada@example.com"}).json()["job_id"]
        deadline = time.monotonic() + 10
        while (state := client.get(f"/jobs/{job_id}").json())["status"] != "completed":
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        print(state)  # {'status': 'completed', 'result': {'sent_to': 'ada@example.com'}}
    # Leaving the block ran the shutdown half of the lifespan.
    assert not any(worker.is_alive for worker in app.state.workers)
