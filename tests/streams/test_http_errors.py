"""How the HTTP server's error middleware answers what a handler raised (no server, no broker)."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request

from streams.http import _answer_errors


async def test_a_client_gone_mid_request_is_an_answer_not_a_crash() -> None:
    # a client that hung up part-way through its upload's body (Ctrl-C on curl, a closed tab) made aiohttp log
    # an ERROR with a traceback ("Error handling request"): the middleware let the ConnectionError through
    async def reading_the_body(_request):
        raise ConnectionResetError("Connection lost")

    response = await _answer_errors(make_mocked_request("POST", "/upload"), reading_the_body)
    assert response.status == 499
    assert json.loads(response.body)["code"] == "client_gone"
