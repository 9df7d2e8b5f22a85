// The official TypeScript MCP SDK client (@modelcontextprotocol/sdk) walking the OAuth journey
// against a protected MCP server, driven by tests/it/sdk_clients.rs. The OAuth work is the SDK's
// own (StreamableHTTPClientTransport + an OAuthClientProvider): 401 → protected resource metadata
// → authorization server metadata → DCR → authorization URL with PKCE and `resource`; this file
// only stores what the SDK hands it, prints the authorization URL, and receives the redirect.
//
//   node journey.cjs MCP_URL CALLBACK_PORT TOOL ARGS_JSON [GATED_TOOL GATED_ARGS_JSON]
//
// Prints JSON lines on stdout (never a token or a code):
//   {"event":"authorize","url":...,"redirect_uri":...}   open this in a browser; the redirect comes
//                                                         back to http://127.0.0.1:PORT/callback
//   {"event":"tools","names":[...]}  {"event":"called","tool":...,"text":...}
//   {"event":"refused","tool":...,"error":...}            the gated tool's first call failed
// Run with NODE_PATH=<dir holding node_modules/@modelcontextprotocol/sdk> (./hack/clients env).
'use strict';
const http = require('node:http');
const { randomBytes } = require('node:crypto');
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { UnauthorizedError } = require('@modelcontextprotocol/sdk/client/auth.js');

const [mcpUrl, port, tool, toolArgs, gatedTool, gatedArgs] = process.argv.slice(2);
const redirectUri = `http://127.0.0.1:${port}/callback`;
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// The loopback redirect target, as a desktop MCP host runs one: each redirect's code, in order.
const codes = [];
let waiting = null;
http.createServer((req, res) => {
  const q = new URL(req.url, redirectUri).searchParams;
  res.end('You can close this window.');
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

// `action` on the client; when the SDK asked for an authorization instead (UnauthorizedError
// after redirectToAuthorization), hand it the code the browser brings back and try once more.
async function authorized(transport, action) {
  try {
    return await action();
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    await transport.finishAuth(await nextCode());
    return await action();
  }
}

async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: JSON.parse(args) });
  const text = result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
  emit({ event: 'called', tool: name, text, is_error: result.isError === true });
}

async function main() {
  const client = new Client({ name: 'sdk-journey', version: '1.0.0' });
  let transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
  try {
    await client.connect(transport);
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    // The SDK's documented pattern: finish the authorization on this transport, connect anew.
    await transport.finishAuth(await nextCode());
    transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
    await client.connect(transport);
  }
  emit({ event: 'tools', names: (await client.listTools()).tools.map((t) => t.name) });
  await call(client, tool, toolArgs);
  if (gatedTool) {
    await authorized(transport, async () => {
      try {
        return await call(client, gatedTool, gatedArgs);
      } catch (e) {
        emit({ event: 'refused', tool: gatedTool, error: e.message });
        throw e;
      }
    });
    emit({ event: 'tools', names: (await client.listTools()).tools.map((t) => t.name) });
  }
  await client.close();
  process.exit(0);
}

main().catch((e) => {
  console.error(`journey failed: ${e.stack || e}`);
  process.exit(1);
});
