"""The parts of a `Worker` (private: import `dbjobq.Worker`).

From the bottom up: `runner` (handler threads), `upkeep` (registry record, rescues,
ticks, the poll step), `completer` (outcome writes), `batch` (claims),
`execution` (one job, watched), `slots` (jobs side by side).
"""
