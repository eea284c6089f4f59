"""moto's S3 server for the test session, answering S3 only.

``python -m moto.server`` works out which of moto's ~150 services each request is for (a
scan of its modules and of every service's URL patterns, per request) and logs every
request to the console; the tests talk to S3 alone, so here every request that is not for
moto's own API goes straight to moto's S3 application, and requests are not logged. The
S3 behaviour is moto's, unchanged (the same backend application and its request recorder).

    python tests/s3_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, run_simple


class _S3Only(DomainDispatcherApplication):
    def get_application(self, environ: dict[str, Any]) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return super().get_application(environ)
        with self.lock:
            app = self.app_instances.get("s3")
            if app is None:
                app = self.app_instances["s3"] = self.create_app("s3")
            return app


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def main(port: int) -> None:
    app = _S3Only(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=_Quiet)


if __name__ == "__main__":
    main(int(sys.argv[1]))
