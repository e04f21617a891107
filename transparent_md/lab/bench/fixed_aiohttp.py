"""A plain aiohttp server answering every GET with one fixed body: the usual Python choice.

Run as `python -m transparent_md.lab.bench.fixed_aiohttp --listen HOST:PORT --body TEXT`;
prints READY_LINE once it accepts connections.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from transparent_md.lab.bench.server_args import listen_and_body

READY_LINE = "fixed-aiohttp: ready"


async def serve(host: str, port: int, body: str) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text=body)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(READY_LINE, flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    host, port, body = listen_and_body(__doc__)
    # aiohttp's default loop, as a typical aiohttp service runs it.
    asyncio.run(serve(host, port, body))


if __name__ == "__main__":
    main()
