"""`Capabilities`: what a storage backend offers beyond the required methods.

The one place that says which optional parts of the `Storage` contract a backend
has. `Storage.capabilities` returns one; workers, `JobQueue` and the conformance
suite read it, and nothing else, before they use an optional feature.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["Capabilities"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend can do beyond the required methods.

    Workers and the conformance suite read `Storage.capabilities` and nothing else
    to decide whether an optional part of the contract is there. Every flag
    defaults to `False`, the safe choice: a worker then does without the feature
    (see each flag), and the suite skips its tests.

    A backend declares its own (`capabilities = Capabilities(release=True)`).
    A flag that needs a method the class does not implement is refused when the
    class is defined, with a `TypeError` that names the method to add.
    """

    release: bool = False
    """`release`/`release_many` give back a claimed job without using its attempt.
    Without it workers claim one job at a time and an attempt interrupted by a
    shutdown counts as a failed one."""
    rescue_workers: bool = False
    """Workers call `rescue_workers` to take back the jobs of workers known to be
    dead at once; without it they wait for their leases to expire. The default
    `Storage.rescue_workers` works on every backend: declare this to use it."""
    newest_first: bool = False
    """`claim(newest_first=True)` claims last in, first out; needed by
    `Worker(lifo=True)`."""
    claims_ahead: bool = False
    """Workers claim their next batch while the current one runs: worth it where a
    claim mostly waits on a database server, not where it is CPU work in this
    process (SQLite, memory). Needs `release`."""
    notify: bool = False
    """`subscribe` reports jobs enqueued by other processes, so idle workers wake
    in milliseconds rather than at their next poll."""
    pauses: bool = False
    """`pause_queue`, `resume_queue` and `paused_queues` stop and restart claims
    from a queue, for every worker on the store."""
    transactions: bool = False
    """`enqueue_in_transaction` joins the application's own transaction."""
    limits: bool = False
    """`claim_limited` enforces concurrency and rate limits and `recent_starts`
    reports a rate key's starts; needed by handlers with `concurrency` or
    `rate_limit` (registering one on a backend without it raises
    `ConfigurationError`)."""
    snooze: bool = False
    """`snooze` puts a running job back to pending without using its attempt.
    Without it a handler's `Snooze` is recorded as a retry that counts."""
    notify_finished: bool = False
    """`subscribe_finished` reports jobs finished by other processes, so
    `JobQueue.wait` returns in milliseconds rather than at its next poll."""
    workflows: bool = False
    """Jobs with `depends_on`, groups (`enqueue_group`, `get_group`), `parents`,
    `children`, `settle_waiting` and `list_jobs(correlation_id=...)`. Without it,
    `JobQueue` refuses `depends_on`, `chain` and `group` with
    `ConfigurationError`, and `JobContext.parent_results` is empty."""
    unique_rules: bool = False
    """`enqueue` honours `NewJob.unique_for` (the key also dedupes against a job
    that finished less than that many seconds ago) and `NewJob.on_conflict`
    (`"raise"` and `"replace"`), as `Storage.enqueue` describes, on every insert
    route and in `enqueue_in_transaction`. No method of its own: `enqueue` does
    it. Without it, `JobQueue` refuses `unique_for` and an `on_conflict` other
    than `"return"` with `ConfigurationError` (nothing is written)."""


def takes(claim: Callable[..., Any], name: str) -> bool:
    """Whether a `claim` has the optional parameter `name` (or `**kwargs`)."""
    try:
        parameters = inspect.signature(claim).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def takes_newest_first(claim: Callable[..., Any]) -> bool:
    """Whether a `claim` has the optional `newest_first` parameter (or `**kwargs`)."""
    return takes(claim, "newest_first")


_METHODS = (
    ("release", "release"),
    ("rescue_workers", "rescue_workers"),
    ("notify", "subscribe"),
    ("transactions", "enqueue_in_transaction"),
    ("pauses", "pause_queue"),
    ("limits", "claim_limited"),
    ("snooze", "snooze"),
    ("notify_finished", "subscribe_finished"),
    ("workflows", "enqueue_group"),
)
"""Each flag that stands for a method of its own, and that method."""


_WORKFLOW_METHODS = ("get_group", "parents", "children", "settle_waiting")
"""What `workflows=True` needs besides `enqueue_group`."""


def missing_for(
    declared: Capabilities, *, claim: Callable[..., Any], own: Callable[[str], bool]
) -> list[str]:
    """What a backend class must add (or stop declaring) for `declared` to hold.

    `claim` is the class's `claim`; `own(name)` tells whether the class has a method
    `name` of its own rather than the base class's default. Empty when everything
    declared is there.
    """
    missing = [
        f"{flag}=True needs a {method}() of its own"
        for flag, method in _METHODS
        # Storage.rescue_workers works on every backend: declaring it is enough.
        if flag != "rescue_workers" and getattr(declared, flag) and not own(method)
    ]
    if declared.newest_first and not takes_newest_first(claim):
        missing.append("newest_first=True needs claim(..., newest_first: bool = False)")
    if declared.limits and not own("recent_starts"):
        missing.append("limits=True needs a recent_starts() of its own")
    if declared.workflows:
        missing.extend(
            f"workflows=True needs a {name}() of its own"
            for name in _WORKFLOW_METHODS
            if not own(name)
        )
    if declared.claims_ahead and not declared.release:
        missing.append("claims_ahead=True needs release=True (a batch claimed ahead is given back)")
    return missing


def inherited(
    declared: Capabilities,
    *,
    claim: Callable[..., Any],
    reverted: Callable[[str], bool],
    added: Callable[[str], bool],
) -> Capabilities:
    """The capabilities a subclass inherits: `declared`, plus what it adds, less what it takes away.

    A subclass that implements an optional method its parent lacks (a `subscribe`
    of its own, says `added("subscribe")`) gains the flag, as a backend that
    declares nothing would. One that puts a base-class default back
    (`release = Storage.release`, says `reverted("release")`) or has a `claim`
    without `newest_first` loses it.
    """
    changed = {flag: True for flag, method in _METHODS if added(method)}
    changed.update({flag: False for flag, method in _METHODS if reverted(method)})
    if not takes_newest_first(claim):
        changed["newest_first"] = False
    if not changed.get("release", declared.release):
        changed["claims_ahead"] = False
    return dataclasses.replace(declared, **changed)


def overrides(cls: type[Any], base: type[Any], name: str) -> bool:
    """Whether `cls` has a method `name` of its own rather than `base`'s default."""
    return getattr(cls, name) is not getattr(base, name)


def derived(storage: Any, *, base: type[Any]) -> Capabilities:
    """What a backend that declares nothing offers, worked out from its methods.

    For backends written before `Capabilities`: an optional method overridden, a
    `claim` that takes `newest_first`, a `claims_ahead` attribute.
    """
    cls = type(storage)
    return Capabilities(
        release=overrides(cls, base, "release"),
        rescue_workers=overrides(cls, base, "rescue_workers"),
        newest_first=takes_newest_first(storage.claim),
        claims_ahead=bool(getattr(storage, "claims_ahead", False)),
        notify=overrides(cls, base, "subscribe"),
        transactions=overrides(cls, base, "enqueue_in_transaction"),
        pauses=overrides(cls, base, "pause_queue"),
        limits=overrides(cls, base, "claim_limited") and overrides(cls, base, "recent_starts"),
        snooze=overrides(cls, base, "snooze"),
        notify_finished=overrides(cls, base, "subscribe_finished"),
        workflows=all(overrides(cls, base, name) for name in ("enqueue_group", *_WORKFLOW_METHODS)),
    )


def declared_for(cls: type[Any], *, base: type[Any]) -> Capabilities | None:
    """The `capabilities` class attribute a new subclass of `base` is to have.

    A class that declares its own is checked: `TypeError`, naming what to add, when
    a flag lacks its method; `None` then (it keeps its own). A class that inherits a
    declaration gets it with what it adds and less what it takes away (see
    `inherited`), and a
    `claims_ahead` attribute of its own is honoured. `None` when nothing is declared.
    """
    own = cls.__dict__.get("capabilities")
    if isinstance(own, Capabilities):
        missing = missing_for(own, claim=cls.claim, own=lambda name: overrides(cls, base, name))
        if missing:
            raise TypeError(f"{cls.__name__} declares {own}, but " + "; ".join(missing))
        return None
    owner = next(c for c in cls.__mro__ if "capabilities" in c.__dict__)
    declared = owner.__dict__["capabilities"]
    if not isinstance(declared, Capabilities):
        return None  # a property (the base's, or a backend's own): nothing to narrow

    def reverted(name: str) -> bool:
        return overrides(owner, base, name) and not overrides(cls, base, name)

    def added(name: str) -> bool:
        return not overrides(owner, base, name) and overrides(cls, base, name)

    narrowed = inherited(declared, claim=cls.claim, reverted=reverted, added=added)
    if "claims_ahead" in cls.__dict__:  # the attribute that came before Capabilities
        ahead = bool(cls.__dict__["claims_ahead"]) and narrowed.release
        narrowed = dataclasses.replace(narrowed, claims_ahead=ahead)
    return narrowed
