"""picows echo server (the picows peer), on uvloop when it is installed, as picows advises.

usage: python3 picows_echo.py PORT
"""
import asyncio
import sys

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            # Messages of the benchmark fit one frame; fin is passed through for others.
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


async def main(port: int):
    def factory(request: WSUpgradeRequest):
        return Echo()

    server = await ws_create_server(factory, "127.0.0.1", port)
    print(f"listening: ws://127.0.0.1:{port}/ (loop {type(asyncio.get_running_loop()).__module__})", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
