"""Run `litellm` (the proxy CLI, same arguments) with one change: a longer uvicorn
worker health-check timeout.

Why: with --num_workers > 1, uvicorn's supervisor spawns each worker and pings it every
0.5 s, killing any worker that does not answer within `timeout_worker_healthcheck`
(default 5 s). A fresh worker only answers after its imports, and importing
litellm's proxy takes ~12 s on this 2-core box (more when workers start together), so
with the stock CLI workers are killed and respawned for ~45 s before they stick. This
launcher passes timeout_worker_healthcheck (env LITELLM_WORKER_HEALTHCHECK_TIMEOUT,
default 120 s) to uvicorn.run; nothing on the request path changes.

Kept import-free at module level: spawned workers re-import this file as __mp_main__.
"""

if __name__ == "__main__":
    import os
    import sys

    import uvicorn

    _run = uvicorn.run
    _timeout = int(os.environ.get("LITELLM_WORKER_HEALTHCHECK_TIMEOUT", "120"))

    def _patched_run(*args, **kwargs):
        kwargs.setdefault("timeout_worker_healthcheck", _timeout)
        return _run(*args, **kwargs)

    uvicorn.run = _patched_run

    from litellm.proxy.proxy_cli import run_server

    sys.argv[0] = "litellm"
    sys.exit(run_server())
