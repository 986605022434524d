"""Echo servers on asyncio or uvloop: `streams` or `protocol`.

usage: asyncio_server.py streams|protocol [asyncio|uvloop]
Prints "PORT <n> <loop>" once listening. asyncio and uvloop set TCP_NODELAY on
their TCP transports themselves.
"""
import asyncio
import sys


async def handle(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:  # the load generator resets its connections when done
        pass
    finally:
        writer.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def main(variant):
    loop = asyncio.get_running_loop()
    if variant == "streams":
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    else:
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
    print("PORT", server.sockets[0].getsockname()[1], type(loop).__module__, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    variant = sys.argv[1] if len(sys.argv) > 1 else "streams"
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import uvloop
        uvloop.run(main(variant))
    else:
        asyncio.run(main(variant))
