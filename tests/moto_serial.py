"""moto's S3 server, answering one request at a time.

moto checks a write's condition (If-None-Match, If-Match) and then writes without
a lock, so under concurrent requests two conditional writes to one key can both
succeed — which real S3 never allows. Serialising requests makes its conditional
writes atomic, so the race tests prove the client's protocol rather than flake on
the emulator. Usage: `python moto_serial.py HOST PORT`.
"""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False)
