// Benchmark peer: panva's oidc-provider (OpenID Certified), configured like
// polyhub's OpenID Connect provider (docs/OIDC.md), in one Node process with
// the package's own in-memory adapter, so a benchmark can load both.
//
//   node hub/benches/oidc_peer/server.mjs PORT CLIENTS_JSON
//
// CLIENTS_JSON is the JSON text itself (starting with `{`) or a path to a
// file holding it:
//   {"clients":[{"client_id","client_secret","redirect_uris":[...],
//     "grant_types":[...],"response_types":["code"],
//     "token_endpoint_auth_method":"client_secret_basic",
//     "scope":"openid offline_access images:read"}], "account":"bench-user"}
//
// Prints `listening http://127.0.0.1:PORT` once ready; quiet otherwise.
//
// Setup only (not the provider's, not to be measured):
//   POST /bench/session {"client_id","scope"} -> {"cookie": "..."}
// signs the configured account in and records its grant of `scope` to the
// client, so `GET /auth?...` answers 303 to the redirect URI with a code at
// once (one hop, no page).
//
// Environment knobs (all optional):
//   OIDC_PEER_ACCESS_TOKEN_ALG  RS256 (default) or EdDSA: how JWT access
//                               tokens are signed (polyhub signs its own
//                               access tokens with EdDSA, ID tokens RS256)
//   OIDC_PEER_STORE_MAX         in-memory store generation size (default
//                               1000000; the package's own default is 1000)

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';

// oidc-provider 9 prints notices when imported on Node 20 ("Unsupported
// runtime") and for TTLs left at their defaults; keep the peer quiet.
const quiet = (write) => (...args) => {
  if (typeof args[0] === 'string' && /^(\x1b\[[0-9;]*m)?oidc-provider (WARNING|NOTICE)/.test(args[0])) return;
  write(...args);
};
console.warn = quiet(console.warn.bind(console));
console.info = quiet(console.info.bind(console));

const { default: Provider, interactionPolicy, errors } = await import('oidc-provider');
// The package's own in-memory adapter (lib/adapters/memory_adapter.js),
// given a larger store than its built-in 1000-entry LRU, which a benchmark
// overflows within a second (evicting sessions, grants and refresh tokens).
const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
const { default: LRU } = await import('oidc-provider/lib/helpers/lru.js');

const [portArg, clientsArg] = process.argv.slice(2);
const port = Number(portArg);
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !clientsArg) {
  process.stderr.write('usage: node server.mjs PORT CLIENTS_JSON\n');
  process.exit(2);
}
const setup = JSON.parse(
  clientsArg.trimStart().startsWith('{') ? clientsArg : readFileSync(clientsArg, 'utf8'),
);
const ACCOUNT = String(setup.account || 'bench-user');

const ISSUER = `http://127.0.0.1:${port}`;
const RESOURCE = 'urn:polyhub:api';
const RESOURCE_SCOPE = 'images:read events:read';
const RESOURCE_SCOPES = new Set(RESOURCE_SCOPE.split(' '));
const AT_ALG = process.env.OIDC_PEER_ACCESS_TOKEN_ALG || 'RS256';
if (AT_ALG !== 'RS256' && AT_ALG !== 'EdDSA') {
  process.stderr.write('OIDC_PEER_ACCESS_TOKEN_ALG must be RS256 or EdDSA\n');
  process.exit(2);
}

// Lifetimes as polyhub's defaults (runtime/src/config.rs, docs/OIDC.md).
const TTL = {
  AccessToken: 15 * 60, // tokens.lifetime_secs: the user's access token
  ClientCredentials: 600, // oidc.access_token_lifetime_secs
  AuthorizationCode: 60, // oidc.code_lifetime_secs
  IdToken: 300, // oidc.id_token_lifetime_secs
  RefreshToken: 12 * 60 * 60, // a refresh works while the session lasts
  Session: 12 * 60 * 60, // sessions.lifetime_secs
  Grant: 12 * 60 * 60,
  Interaction: 10 * 60,
};

// Signing keys made at start: RSA 2048 (RS256, as polyhub's ID token key),
// and an Ed25519 key only when access tokens are to be EdDSA.
function jwk(privateKey, alg) {
  const key = privateKey.export({ format: 'jwk' });
  const kid = crypto.createHash('sha256')
    .update(JSON.stringify(privateKey.export({ format: 'jwk' })))
    .digest('base64url').slice(0, 16);
  return { ...key, kid, alg, use: 'sig' };
}
const keys = [jwk(crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, 'RS256')];
if (AT_ALG === 'EdDSA') {
  keys.push(jwk(crypto.generateKeyPairSync('ed25519').privateKey, 'EdDSA'));
}

const clients = (setup.clients || []).map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  redirect_uris: c.redirect_uris || [],
  grant_types: c.grant_types || ['authorization_code'],
  response_types: c.response_types || ['code'],
  token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
  ...(c.scope ? { scope: c.scope } : {}),
  id_token_signed_response_alg: 'RS256',
  // polyhub's ID tokens always carry auth_time.
  require_auth_time: true,
}));

// Only the configured account exists; its claims are `sub` (the bench asks
// for no profile or email scope).
async function findAccount(_ctx, sub) {
  if (sub !== ACCOUNT) return undefined;
  return { accountId: sub, async claims() { return { sub }; } };
}

// The default policy, less the check that makes `prompt=consent` always
// show a page: consent is asked only for what the grant lacks.
const policy = interactionPolicy.base();
policy.get('consent').checks.remove('consent_prompt');

const STORE_MAX = Number(process.env.OIDC_PEER_STORE_MAX || 1_000_000);
const store = new LRU({ maxSize: STORE_MAX });
const CLOCK_TOLERANCE = 15; // oidc-provider's default clockTolerance
class PeerAdapter extends MemoryAdapter {
  constructor(model) {
    super(model, store, CLOCK_TOLERANCE);
  }
}

const provider = new Provider(ISSUER, {
  adapter: PeerAdapter,
  clients,
  jwks: { keys },
  findAccount,
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES],
  claims: { openid: ['sub'] },
  responseTypes: ['code'],
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'RS256',
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  // Plain HTTP on loopback: ctx.secure is false, so oidc-provider sets no
  // `secure` cookie flag; no proxy is trusted (provider.proxy stays false).
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
  },
  pkce: { required: () => true }, // and oidc-provider 9 only knows S256
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: RESOURCE_SCOPE,
          audience: RESOURCE,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: AT_ALG } },
        };
      },
    },
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client, code) => (
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access')
  ),
  interactions: {
    policy,
    url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  ttl: Object.fromEntries(Object.entries(TTL).map(([k, v]) => [k, () => v])),
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Errors are the client's business; keep stderr for real trouble.
provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`server_error: ${err?.stack || err}\n`);
});

// OIDC Core §11 and oidc-provider drop `offline_access` from an
// authorization request without `prompt=consent`; polyhub does not ask for
// it. Add it when absent so the bench's request keeps offline_access (the
// consent page itself is not forced, see the policy above).
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/auth') {
    const { query } = ctx;
    if (query.prompt === undefined && typeof query.scope === 'string'
      && query.scope.split(' ').includes('offline_access')) {
      ctx.querystring = `${ctx.querystring}&prompt=consent`;
    }
    return next();
  }
  if (ctx.path === '/bench/session') {
    if (ctx.method !== 'POST') {
      ctx.status = 405;
      return undefined;
    }
    return benchSession(ctx);
  }
  return next();
});

async function readJson(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

// Setup only: sign the configured account in, as a finished login would
// (Session.loginAccount), and record its grant of `scope` to the client, as
// a finished consent would (Grant saved, its id on the session), then hand
// back the session cookie(s).
async function benchSession(ctx) {
  let body;
  try {
    body = await readJson(ctx);
  } catch {
    ctx.status = 400;
    ctx.body = { error: 'invalid JSON' };
    return;
  }
  const clientId = body.client_id;
  const client = await provider.Client.find(String(clientId ?? ''));
  if (!client) {
    ctx.status = 400;
    ctx.body = { error: 'unknown client_id' };
    return;
  }
  const scopes = String(body.scope || 'openid offline_access images:read').split(' ').filter(Boolean);

  const grant = new provider.Grant({ accountId: ACCOUNT, clientId: client.clientId });
  // What oidc-provider's consent would record for this request: every
  // requested scope is one of `scopes` (so an "OIDC scope" to it), and the
  // API's own scopes are granted for the resource server as well.
  grant.addOIDCScope(scopes.join(' '));
  const rsScopes = scopes.filter((s) => RESOURCE_SCOPES.has(s));
  if (rsScopes.length) grant.addResourceScope(RESOURCE, rsScopes.join(' '));
  const grantId = await grant.save();

  const session = new provider.Session();
  session.loginAccount({ accountId: ACCOUNT, amr: ['pwd'] });
  session.ensureClientContainer(client.clientId);
  session.grantIdFor(client.clientId, grantId);
  await session.save(TTL.Session);

  ctx.cookies.set(provider.cookieName('session'), session.id, {
    httpOnly: true,
    sameSite: 'lax',
    expires: new Date((session.exp) * 1000),
  });
  let setCookie = ctx.response.get('set-cookie') || [];
  if (typeof setCookie === 'string') setCookie = [setCookie];
  const cookie = setCookie.map((c) => c.split(';')[0]).join('; ');
  ctx.status = 200;
  ctx.body = { cookie, grant_id: grantId, session_uid: session.uid };
}

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${ISSUER}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
