"""The official Python MCP SDK client (PyPI `mcp`) walking the OAuth journey against a protected
MCP server, driven by tests/it/sdk_clients.rs. The OAuth work is the SDK's own
(`mcp.client.auth.OAuthClientProvider`, an httpx2 auth flow): 401 → protected resource metadata →
authorization server metadata → DCR → authorization URL with PKCE, `state` and `resource`, and on
403 insufficient_scope a re-authorization with the union of the scopes. This file only stores what
the SDK hands it, prints the authorization URL and receives the redirect.

    python journey.py MCP_URL CALLBACK_PORT TOOL ARGS_JSON [GATED_TOOL GATED_ARGS_JSON]

Prints the JSON lines tests/clients/journey.cjs prints (never a token or a code), except
`step_up`: this SDK re-authorizes on 403 insufficient_scope by itself.
"""

import asyncio
import json
import sys
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp.client import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


def emit(**event):
    print(json.dumps(event), flush=True)


class Memory:
    """The SDK's TokenStorage, in memory."""

    tokens: OAuthToken | None = None
    client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


class Callback:
    """The loopback redirect target, as a desktop MCP host runs one: each redirect's query, in order."""

    def __init__(self, port: int):
        self.port, self.queries = port, asyncio.Queue()

    async def start(self):
        await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def handle(self, reader, writer):
        target = (await reader.readline()).split()[1].decode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\nYou can close this window.")
        await writer.drain()
        writer.close()
        if urlparse(target).path == "/callback":  # not the browser's favicon request, say
            await self.queries.put(parse_qs(urlparse(target).query))

    async def next_code(self) -> AuthorizationCodeResult:
        q = await self.queries.get()
        if "code" not in q:
            sys.exit(f"callback without a code (error={q.get('error')})")
        return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0])


async def report_token_request(request: httpx2.Request):
    """Every request the SDK sends (MCP and OAuth) passes here; token requests are reported without their values."""
    form = parse_qs(request.content.decode(errors="replace")) if request.method == "POST" else {}
    if "grant_type" in form:
        resource = form.get("resource", [None])[0]
        emit(event="token_request", grant_type=form["grant_type"][0], resource=resource, code_verifier="code_verifier" in form)


async def report_challenge(response: httpx2.Response):
    if response.status_code in (401, 403):
        emit(event="challenge", status=response.status_code, www_authenticate=response.headers.get("www-authenticate"))


async def call(client: Client, name: str, args: str):
    result = await client.call_tool(name, json.loads(args))
    text = "".join(c.text for c in result.content if c.type == "text")
    emit(event="called", tool=name, text=text, is_error=bool(result.is_error))


async def main(url, port, tool, args, gated_tool=None, gated_args=None):
    callback = Callback(int(port))
    await callback.start()
    redirect_uri = f"http://127.0.0.1:{port}/callback"

    async def redirect(authorization_url: str):
        emit(event="authorize", url=authorization_url, redirect_uri=redirect_uri)

    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp-keycloak-operator Python SDK journey",
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=Memory(),
        redirect_handler=redirect,
        callback_handler=callback.next_code,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=60, event_hooks={"request": [report_token_request], "response": [report_challenge]}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            emit(event="tools", names=[t.name for t in (await client.list_tools()).tools])
            await call(client, tool, args)
            if gated_tool:
                # The SDK itself answers the 403 with a re-authorization (an authorize event).
                await call(client, gated_tool, gated_args)
                emit(event="tools", names=[t.name for t in (await client.list_tools()).tools])


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
