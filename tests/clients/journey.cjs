// The official TypeScript MCP SDK client (@modelcontextprotocol/sdk) walking the OAuth journey
// against a protected MCP server, driven by tests/it/sdk_clients.rs. The OAuth work is the SDK's
// own (StreamableHTTPClientTransport + an OAuthClientProvider): 401 → protected resource metadata
// → authorization server metadata → DCR → authorization URL with PKCE and `resource`; this file
// only stores what the SDK hands it, prints the authorization URL, and receives the redirect.
//
//   node journey.cjs MCP_URL CALLBACK_PORT TOOL ARGS_JSON [GATED_TOOL GATED_ARGS_JSON]
//
// Prints JSON lines on stdout (never a token or a code):
//   {"event":"challenge","status":401|403,"www_authenticate":...}  a challenge the SDK received
//   {"event":"authorize","url":...,"redirect_uri":...}   open this in a browser; the redirect comes
//                                                         back to http://127.0.0.1:PORT/callback
//   {"event":"tools","names":[...]}  {"event":"called","tool":...,"text":...}
//   {"event":"token_request","grant_type":...,"resource":...,"code_verifier":bool}  what the SDK
//                                                         sent to the token endpoint (no values)
//   {"event":"refused","tool":...,"error":...}            the gated tool's call failed (the SDK's error)
//   {"event":"step_up","scope":...}                       this program asked the SDK's auth() for it
// Run with NODE_PATH=<dir holding node_modules/@modelcontextprotocol/sdk> (./hack/testbed clients-env).
'use strict';
const http = require('node:http');
const { randomBytes } = require('node:crypto');
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { auth, extractWWWAuthenticateParams, UnauthorizedError } = require('@modelcontextprotocol/sdk/client/auth.js');

const [mcpUrl, port, tool, toolArgs, gatedTool, gatedArgs] = process.argv.slice(2);
const redirectUri = `http://127.0.0.1:${port}/callback`;
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// The loopback redirect target, as a desktop MCP host runs one: each redirect's code, in order.
const codes = [];
let waiting = null;
http.createServer((req, res) => {
  const url = new URL(req.url, redirectUri);
  res.end('You can close this window.');
  if (url.pathname !== '/callback') return; // the browser's favicon request, say
  const q = url.searchParams;
  if (!q.get('code') || q.get('state') !== provider.lastState) {
    console.error(`callback without a code or with a foreign state (error=${q.get('error')})`);
    process.exit(1);
  }
  codes.push(q.get('code'));
  if (waiting) waiting();
}).listen(Number(port), '127.0.0.1');
const nextCode = () => new Promise((resolve) => {
  waiting = () => { waiting = null; resolve(codes.shift()); };
  if (codes.length) waiting();
});

// An in-memory OAuthClientProvider: keeps what the SDK saves, as the SDK's own example does.
const provider = {
  redirectUrl: redirectUri,
  clientMetadata: {
    client_name: 'mcp-keycloak-operator TypeScript SDK journey',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  },
  state() { this.lastState = randomBytes(16).toString('hex'); return this.lastState; },
  clientInformation() { return this.client; },
  saveClientInformation(info) { this.client = info; },
  tokens() { return this.saved; },
  saveTokens(tokens) { this.saved = tokens; },
  saveCodeVerifier(v) { this.verifier = v; },
  codeVerifier() { return this.verifier; },
  redirectToAuthorization(url) { emit({ event: 'authorize', url: url.href, redirect_uri: redirectUri }); },
};

// The SDK's fetch (MCP and OAuth requests alike): reports challenges, and token requests without
// their values; keeps the last 403 for stepUp.
let lastForbidden;
async function observingFetch(url, init) {
  const form = init?.body instanceof URLSearchParams ? init.body : null;
  if (form?.has('grant_type')) {
    emit({ event: 'token_request', grant_type: form.get('grant_type'), resource: form.get('resource'),
      code_verifier: form.has('code_verifier') });
  }
  const response = await fetch(url, init);
  if (response.status === 401 || response.status === 403) {
    emit({ event: 'challenge', status: response.status, www_authenticate: response.headers.get('www-authenticate') });
  }
  if (response.status === 403) lastForbidden = response;
  return response;
}

// After a 403 insufficient_scope the SDK calls its auth() with the challenged scope. Holding no
// refresh token, that redirects (UnauthorizedError): finish it with the browser's code. Holding
// one, auth() refreshes instead, the refreshed token has the old scopes, the retry gets the same
// 403 and the SDK gives up. What its API then leaves to the host: drop the tokens and call its
// auth() with the scope of the challenge, which redirects.
async function stepUp(transport, error) {
  if (!(error instanceof UnauthorizedError)) {
    const { scope, resourceMetadataUrl } = extractWWWAuthenticateParams(lastForbidden);
    if (!scope) throw error;
    emit({ event: 'step_up', scope });
    provider.saved = undefined;
    const result = await auth(provider, { serverUrl: new URL(mcpUrl), scope, resourceMetadataUrl, fetchFn: observingFetch });
    if (result !== 'REDIRECT') throw error;
  }
  await transport.finishAuth(await nextCode());
}

async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: JSON.parse(args) });
  const text = result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
  emit({ event: 'called', tool: name, text, is_error: result.isError === true });
}

async function main() {
  const client = new Client({ name: 'sdk-journey', version: '1.0.0' });
  const options = { authProvider: provider, fetch: observingFetch };
  let transport = new StreamableHTTPClientTransport(new URL(mcpUrl), options);
  try {
    await client.connect(transport);
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    // The SDK's documented pattern: finish the authorization on this transport, connect anew.
    await transport.finishAuth(await nextCode());
    transport = new StreamableHTTPClientTransport(new URL(mcpUrl), options);
    await client.connect(transport);
  }
  emit({ event: 'tools', names: (await client.listTools()).tools.map((t) => t.name) });
  await call(client, tool, toolArgs);
  if (gatedTool) {
    try {
      await call(client, gatedTool, gatedArgs);
    } catch (e) {
      emit({ event: 'refused', tool: gatedTool, error: e.message });
      await stepUp(transport, e);
      await call(client, gatedTool, gatedArgs);
    }
    emit({ event: 'tools', names: (await client.listTools()).tools.map((t) => t.name) });
  }
  await client.close();
  process.exit(0);
}

main().catch((e) => {
  console.error(`journey failed: ${e.stack || e}`);
  process.exit(1);
});
