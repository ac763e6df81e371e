// An OpenID Connect relying party as a web app's developer would write it
// with panva's openid-client (npm, pinned by package-lock.json): a public
// client (no secret, `None()` client authentication, PKCE S256) of polyhub's
// provider. A client no one on this project wrote.
//
//   node oidc_rp.mjs start  ISSUER CLIENT_ID REDIRECT_URI STATE_FILE [--max-seconds S]
//   node oidc_rp.mjs finish ISSUER CLIENT_ID REDIRECT_URI POST_LOGOUT_URI STATE_FILE CALLBACK_URL
//                           [--max-seconds S]
//   node oidc_rp.mjs reuse  ISSUER CLIENT_ID REDIRECT_URI STATE_FILE CALLBACK_URL [--max-seconds S]
//
// ISSUER is rest-auth's http://127.0.0.1:PORT, exactly as the provider names
// itself (plain http on loopback: allowInsecureRequests). A whole run has a
// browser (oidc_browser.py) between `start` and `finish`, and a second one,
// a fresh sign-in from another `start` (another STATE_FILE), before `reuse`;
// CALLBACK_URL is where the browser landed: REDIRECT_URI?code=&state=&iss=.
//
// start:
//   1. discovery: the metadata advertises polyhub's endpoints, response type
//      code, PKCE S256 only, RS256 and EdDSA ID tokens, the client
//      authentication methods, and the `iss` authorization response parameter;
//   2. a PKCE verifier, a state and a nonce are made and written to
//      STATE_FILE; prints {"authorization_url": ...} for scope
//      `openid profile email offline_access`.
// finish:
//   1. discovery; STATE_FILE is this client's;
//   2. authorizationCodeGrant: openid-client checks state, iss, PKCE, the
//      nonce, and (enableNonRepudiationChecks) the ID token's signature
//      against the JWKS;
//   3. the ID token: RS256, sub a UUID, aud CLIENT_ID, auth_time, sid, at_hash
//      (checked here: openid-client leaves it to the app in the code flow),
//      preferred_username, email and email_verified;
//   4. fetchUserInfo (GET; sub must match) and the same by POST;
//   5. GET ISSUER/profile with the access token: 200, its id is sub (and its
//      username and email the ID token's);
//   6. refreshTokenGrant: a new refresh token, a new access token that works
//      on /profile;
//   7. tokenIntrospection of the new access token: active;
//   8. buildEndSessionUrl (id_token_hint, post_logout_redirect_uri, state),
//      fetched without following redirects: 303 to POST_LOGOUT_URI?state=;
//   9. the grant is over: /profile with the access tokens is 401, and the
//      newest refresh token is refused with invalid_grant.
// reuse:
//   1. discovery; STATE_FILE is this client's;
//   2. authorizationCodeGrant (the same checks as finish's step 2);
//   3. refresh: rt1 gives rt2 (a different one) and an access token that
//      works on /profile;
//   4. rt1 again: 400 invalid_grant;
//   5. rt2, never used: 400 invalid_grant (the reuse revoked the grant);
//   6. /profile with rt2's access token, and with the first one: 401.
//
// Prints one JSON document with what it saw (claims, statuses, never a
// token) and exits 0; on a failure, prints what it saw so far with
// "failed_step" and "error", says why on stderr, exits 1. Every call has a
// timeout, and the whole run is bounded by --max-seconds (default 90).
// Its dependencies are pinned by package-lock.json (npm ci --prefix e2e/clients).

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

import * as client from 'openid-client';

const SCOPE = 'openid profile email offline_access';
// How long one answer may take to arrive, in seconds.
const WAIT = 10;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// What discovery must advertise: endpoints (as paths under the issuer) and
// lists (compared as sets).
const ENDPOINTS = {
  authorization_endpoint: '/oauth2/authorize',
  token_endpoint: '/oauth2/token',
  userinfo_endpoint: '/oauth2/userinfo',
  jwks_uri: '/.well-known/jwks.json',
  end_session_endpoint: '/oauth2/logout',
  introspection_endpoint: '/oauth2/introspect',
  revocation_endpoint: '/oauth2/revoke',
};
const LISTS = {
  response_types_supported: ['code'],
  code_challenge_methods_supported: ['S256'],
  id_token_signing_alg_values_supported: ['RS256', 'EdDSA'],
  token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'none'],
};

const USAGE = {
  start: ['issuer', 'clientId', 'redirectUri', 'stateFile'],
  finish: ['issuer', 'clientId', 'redirectUri', 'postLogoutUri', 'stateFile', 'callbackUrl'],
  reuse: ['issuer', 'clientId', 'redirectUri', 'stateFile', 'callbackUrl'],
};

class StepFailed extends Error {}

class UsageError extends Error {}

function check(condition, message) {
  if (!condition) throw new StepFailed(message);
}

class Deadline {
  constructor(seconds) {
    this.seconds = seconds;
    this.end = Date.now() + seconds * 1000;
  }

  // Seconds one call may take: WAIT at most, and never past the end.
  left(most = WAIT) {
    const left = Math.min(most, (this.end - Date.now()) / 1000);
    if (left <= 0) throw new StepFailed(`--max-seconds ${this.seconds} passed`);
    return left;
  }
}

function parseArgs(argv) {
  const positional = [];
  let maxSeconds = 90;
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--max-seconds' || argv[i].startsWith('--max-seconds=')) {
      const value = argv[i].includes('=') ? argv[i].split('=')[1] : argv[(i += 1)];
      maxSeconds = Number(value);
      if (!(maxSeconds > 0)) throw new UsageError(`--max-seconds must be a positive number, not ${value}`);
    } else {
      positional.push(argv[i]);
    }
  }
  const [mode, ...values] = positional;
  const names = USAGE[mode];
  if (!names || values.length !== names.length) {
    throw new UsageError(Object.entries(USAGE)
      .map(([m, n]) => `usage: node oidc_rp.mjs ${m} ${n.map(upper).join(' ')} [--max-seconds S]`)
      .join('\n'));
  }
  const args = { mode, maxSeconds };
  names.forEach((name, i) => { args[name] = values[i]; });

  // The issuer is an origin on loopback, written as the provider writes it:
  // no path, no trailing slash.
  const issuer = parseUrl(args.issuer, 'ISSUER');
  if (issuer.protocol !== 'http:' || !loopback(issuer.hostname) || !issuer.port || issuer.origin !== args.issuer) {
    throw new UsageError(`ISSUER must be http://127.0.0.1:PORT, not ${args.issuer}`);
  }
  for (const name of ['redirectUri', 'postLogoutUri']) {
    if (args[name] !== undefined) parseUrl(args[name], upper(name));
  }
  if (args.callbackUrl !== undefined) {
    const callback = parseUrl(args.callbackUrl, 'CALLBACK_URL');
    // openid-client takes the redirect_uri of the token request from the
    // callback's address without its query: it must be REDIRECT_URI itself.
    if (`${callback.origin}${callback.pathname}` !== args.redirectUri) {
      throw new UsageError(`CALLBACK_URL ${args.callbackUrl} is not at REDIRECT_URI ${args.redirectUri}`);
    }
  }
  return args;
}

function upper(name) {
  return name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
}

function parseUrl(value, name) {
  try {
    return new URL(value);
  } catch {
    throw new UsageError(`${name} is not a URL: ${value}`);
  }
}

function loopback(host) {
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

// ---- what the provider answered, in words (never a token) ----

// An error of openid-client (or of fetch) in one line, with its causes.
function describe(err) {
  if (err instanceof client.ResponseBodyError) {
    return `HTTP ${err.status} ${err.error}${err.error_description ? `: ${err.error_description}` : ''}`;
  }
  if (err instanceof client.AuthorizationResponseError) {
    return `the authorization response is an error: ${err.error}`
      + `${err.error_description ? `: ${err.error_description}` : ''}`;
  }
  if (err instanceof client.WWWAuthenticateChallengeError) {
    return `HTTP ${err.status} with a WWW-Authenticate challenge: `
      + err.cause.map((c) => `${c.scheme} ${JSON.stringify(c.parameters)}`).join(', ');
  }
  const parts = [];
  for (let e = err, depth = 0; e && depth < 4; e = e.cause, depth += 1) {
    if (typeof Response !== 'undefined' && e instanceof Response) {
      parts.push(`HTTP ${e.status} ${e.headers.get('content-type') || ''}`.trim());
      break;
    }
    if (!(e instanceof Error)) break;
    parts.push(e.code ? `${e.message} (${e.code})` : e.message);
  }
  return parts.join(': ') || String(err);
}

// One part of a JWT (0: its header) as JSON, without checking anything.
function jwtPart(jwt, index) {
  return JSON.parse(Buffer.from(jwt.split('.')[index], 'base64url').toString());
}

// OpenID Connect Core 3.1.3.6: the left half of the SHA-256 of the access
// token, base64url (for an RS256 ID token).
function atHash(accessToken) {
  return createHash('sha256').update(accessToken, 'ascii').digest().subarray(0, 16).toString('base64url');
}

function sameSet(a, b) {
  return Array.isArray(a) && a.length === b.length && b.every((x) => a.includes(x));
}

// ---- steps ----

async function discover(args, deadline, summary) {
  const config = await client.discovery(new URL(args.issuer), args.clientId, undefined, client.None(), {
    // Plain http on loopback, and the ID token's signature checked against
    // the JWKS (openid-client skips it for token endpoint answers otherwise).
    execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks],
    timeout: deadline.left(),
  });
  const metadata = config.serverMetadata();
  const wrong = [];
  if (metadata.issuer !== args.issuer) wrong.push(`issuer ${metadata.issuer}, not ${args.issuer}`);
  for (const [field, path] of Object.entries(ENDPOINTS)) {
    if (metadata[field] !== args.issuer + path) wrong.push(`${field} ${metadata[field]}, not ${args.issuer}${path}`);
  }
  for (const [field, values] of Object.entries(LISTS)) {
    if (!sameSet(metadata[field], values)) {
      wrong.push(`${field} ${JSON.stringify(metadata[field])}, not ${JSON.stringify(values)}`);
    }
  }
  if (metadata.authorization_response_iss_parameter_supported !== true) {
    wrong.push(`authorization_response_iss_parameter_supported ${metadata.authorization_response_iss_parameter_supported}`);
  }
  summary.discovery = {
    issuer: metadata.issuer,
    scopes_supported: metadata.scopes_supported,
    grant_types_supported: metadata.grant_types_supported,
  };
  check(!wrong.length, `the discovery document: ${wrong.join('; ')}`);
  return config;
}

function readState(args) {
  let saved;
  try {
    saved = JSON.parse(readFileSync(args.stateFile, 'utf8'));
  } catch (err) {
    throw new StepFailed(`STATE_FILE ${args.stateFile}: ${err.message}`);
  }
  for (const [field, value] of [['issuer', args.issuer], ['client_id', args.clientId], ['redirect_uri', args.redirectUri]]) {
    check(saved[field] === value, `STATE_FILE was written for ${field} ${saved[field]}, not ${value}`);
  }
  return saved;
}

// authorizationCodeGrant with every check openid-client makes: state, iss,
// PKCE (the verifier goes to the token endpoint), nonce, the ID token's
// iss, aud, exp, iat and signature.
async function codeGrant(config, args, saved, deadline) {
  config.timeout = deadline.left();
  const tokens = await client.authorizationCodeGrant(config, new URL(args.callbackUrl), {
    pkceCodeVerifier: saved.code_verifier,
    expectedState: saved.state,
    expectedNonce: saved.nonce,
    idTokenExpected: true,
  });
  check(tokens.token_type === 'bearer', `token_type ${tokens.token_type}, not Bearer`);
  check(typeof tokens.refresh_token === 'string' && tokens.refresh_token,
    `no refresh_token for scope ${SCOPE} (offline_access)`);
  check(Number.isFinite(tokens.expires_in) && tokens.expires_in > 0, `expires_in ${tokens.expires_in}`);
  return tokens;
}

function idTokenClaims(tokens, args) {
  const claims = tokens.claims();
  const header = jwtPart(tokens.id_token, 0);
  const seen = {
    alg: header.alg,
    kid: header.kid,
    iss: claims.iss,
    sub: claims.sub,
    aud: claims.aud,
    exp: claims.exp,
    iat: claims.iat,
    auth_time: claims.auth_time,
    sid: claims.sid,
    nonce_matches: true, // openid-client compared it
    at_hash_matches: claims.at_hash === atHash(tokens.access_token),
    preferred_username: claims.preferred_username,
    email: claims.email,
    email_verified: claims.email_verified,
  };
  const wrong = [];
  if (header.alg !== 'RS256') wrong.push(`alg ${header.alg}, not RS256`);
  if (!UUID.test(claims.sub)) wrong.push(`sub ${claims.sub} is not a UUID`);
  const audience = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (audience.length !== 1 || audience[0] !== args.clientId) {
    wrong.push(`aud ${JSON.stringify(claims.aud)}, not ${args.clientId}`);
  }
  if (!Number.isInteger(claims.auth_time) || claims.auth_time > claims.iat) {
    wrong.push(`auth_time ${claims.auth_time} (iat ${claims.iat})`);
  }
  if (typeof claims.sid !== 'string' || !claims.sid) wrong.push(`sid ${claims.sid}`);
  if (claims.at_hash === undefined) wrong.push('no at_hash');
  else if (!seen.at_hash_matches) wrong.push(`at_hash ${claims.at_hash} is not the access token's`);
  if (typeof claims.preferred_username !== 'string' || !claims.preferred_username) {
    wrong.push(`preferred_username ${claims.preferred_username} (scope profile)`);
  }
  if (typeof claims.email !== 'string' || !claims.email.includes('@')) wrong.push(`email ${claims.email} (scope email)`);
  if (typeof claims.email_verified !== 'boolean') wrong.push(`email_verified ${claims.email_verified} (scope email)`);
  return { claims, seen, wrong };
}

async function userInfo(config, tokens, claims, deadline, summary) {
  config.timeout = deadline.left();
  // openid-client compares sub with the ID token's.
  const got = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  summary.userinfo = got;
  check(got.preferred_username === claims.preferred_username && got.email === claims.email,
    `userinfo says ${got.preferred_username} <${got.email}>, the ID token ${claims.preferred_username} <${claims.email}>`);

  config.timeout = deadline.left();
  const endpoint = new URL(config.serverMetadata().userinfo_endpoint);
  const response = await client.fetchProtectedResource(config, tokens.access_token, endpoint, 'POST');
  const text = await response.text();
  summary.userinfo_post = { status: response.status };
  check(response.status === 200, `userinfo by POST: HTTP ${response.status} ${text.slice(0, 200)}`);
  let posted;
  try {
    posted = JSON.parse(text);
  } catch {
    throw new StepFailed(`userinfo by POST: not JSON: ${text.slice(0, 200)}`);
  }
  summary.userinfo_post.sub_matches = posted.sub === claims.sub;
  check(posted.sub === claims.sub, `userinfo by POST: sub ${posted.sub}, not ${claims.sub}`);
}

// GET ISSUER/profile with a bearer access token: {status, id, username, email}.
async function profile(args, accessToken, deadline) {
  const response = await fetch(`${args.issuer}/profile`, {
    headers: { authorization: `Bearer ${accessToken}`, accept: 'application/json' },
    redirect: 'manual',
    signal: AbortSignal.timeout(deadline.left() * 1000),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (response.status !== 200) return { status: response.status };
  check(body && typeof body === 'object', `/profile: HTTP 200, not a JSON object: ${text.slice(0, 200)}`);
  return { status: 200, id: body.id, username: body.username, email: body.email };
}

async function profileWorks(args, accessToken, claims, deadline, what) {
  const seen = await profile(args, accessToken, deadline);
  check(seen.status === 200, `/profile with ${what}: HTTP ${seen.status}, not 200`);
  check(seen.id === claims.sub, `/profile with ${what} is user ${seen.id}, the ID token's sub is ${claims.sub}`);
  return seen;
}

async function profileRefused(args, accessToken, deadline, what) {
  const seen = await profile(args, accessToken, deadline);
  check(seen.status === 401, `/profile with ${what}: HTTP ${seen.status}, not 401`);
  return seen.status;
}

async function refresh(config, refreshToken, deadline, what) {
  config.timeout = deadline.left();
  const tokens = await client.refreshTokenGrant(config, refreshToken);
  check(typeof tokens.refresh_token === 'string' && tokens.refresh_token,
    `${what}: no new refresh_token (rotation)`);
  check(tokens.refresh_token !== refreshToken, `${what}: the same refresh token came back (no rotation)`);
  return tokens;
}

// A refresh that must be refused: {status, error}.
async function refreshRefused(config, refreshToken, deadline, what) {
  config.timeout = deadline.left();
  try {
    await client.refreshTokenGrant(config, refreshToken);
  } catch (err) {
    if (!(err instanceof client.ResponseBodyError)) throw new StepFailed(`${what}: ${describe(err)}, not invalid_grant`);
    const seen = { status: err.status, error: err.error };
    check(seen.status === 400 && seen.error === 'invalid_grant',
      `${what}: HTTP ${seen.status} ${seen.error}, not 400 invalid_grant`);
    return seen;
  }
  throw new StepFailed(`${what}: it was accepted, not refused with invalid_grant`);
}

// The subject of a refreshed ID token, when one comes, stays the same
// (OpenID Connect Core 12.2).
function refreshedIdToken(tokens, claims, what) {
  if (!tokens.id_token) return undefined;
  const again = tokens.claims();
  check(again.sub === claims.sub, `${what}: the new ID token's sub ${again.sub}, not ${claims.sub}`);
  return { sub_matches: true, auth_time: again.auth_time, sid: again.sid };
}

// ---- the three commands ----

async function start(args, deadline, summary, step) {
  step('1: discovery');
  const config = await discover(args, deadline, summary);

  step('2: the authorization request');
  const saved = {
    issuer: args.issuer,
    client_id: args.clientId,
    redirect_uri: args.redirectUri,
    code_verifier: client.randomPKCECodeVerifier(),
    state: client.randomState(),
    nonce: client.randomNonce(),
  };
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: args.redirectUri,
    scope: SCOPE,
    code_challenge: await client.calculatePKCECodeChallenge(saved.code_verifier),
    code_challenge_method: 'S256',
    state: saved.state,
    nonce: saved.nonce,
  });
  writeFileSync(args.stateFile, JSON.stringify(saved), { mode: 0o600 });
  summary.authorization_url = url.href;
}

async function finish(args, deadline, summary, step) {
  step('1: discovery');
  const config = await discover(args, deadline, summary);
  const saved = readState(args);

  step('2: authorizationCodeGrant');
  const first = await codeGrant(config, args, saved, deadline);
  summary.token = { token_type: first.token_type, expires_in: first.expires_in, scope: first.scope };

  step('3: the ID token');
  const { claims, seen, wrong } = idTokenClaims(first, args);
  summary.id_token = seen;
  check(!wrong.length, `the ID token: ${wrong.join('; ')}`);

  step('4: userinfo');
  await userInfo(config, first, claims, deadline, summary);

  step('5: /profile with the access token');
  summary.profile = await profileWorks(args, first.access_token, claims, deadline, 'the access token');
  check(summary.profile.username === claims.preferred_username && summary.profile.email === claims.email,
    `/profile is ${summary.profile.username} <${summary.profile.email}>, `
    + `the ID token ${claims.preferred_username} <${claims.email}>`);

  step('6: refreshTokenGrant');
  const second = await refresh(config, first.refresh_token, deadline, 'the refresh');
  summary.refresh = {
    new_refresh_token: true,
    new_access_token: second.access_token !== first.access_token,
    id_token: refreshedIdToken(second, claims, 'the refresh'),
    profile: (await profileWorks(args, second.access_token, claims, deadline, 'the refreshed access token')).status,
  };

  step('7: tokenIntrospection of the refreshed access token');
  config.timeout = deadline.left();
  const introspection = await client.tokenIntrospection(config, second.access_token);
  summary.introspection = introspection;
  check(introspection.active === true, `the refreshed access token introspects ${JSON.stringify(introspection)}`);
  check(introspection.client_id === undefined || introspection.client_id === args.clientId,
    `the refreshed access token introspects as client ${introspection.client_id}`);
  check(introspection.sub === undefined || introspection.sub === claims.sub,
    `the refreshed access token introspects with sub ${introspection.sub}, not ${claims.sub}`);

  step('8: RP-initiated logout');
  const logoutState = client.randomState();
  const endSession = client.buildEndSessionUrl(config, {
    id_token_hint: second.id_token || first.id_token,
    post_logout_redirect_uri: args.postLogoutUri,
    state: logoutState,
  });
  const response = await fetch(endSession, { redirect: 'manual', signal: AbortSignal.timeout(deadline.left() * 1000) });
  await response.arrayBuffer();
  const location = response.headers.get('location') || '';
  let back;
  try {
    back = new URL(location);
  } catch {
    back = undefined;
  }
  summary.logout = {
    status: response.status,
    location: location.split('?')[0],
    state_matches: back?.searchParams.get('state') === logoutState,
  };
  check(response.status === 303, `the end session endpoint answered HTTP ${response.status}, not 303`);
  check(location.startsWith(args.postLogoutUri), `the end session endpoint sent to ${location}, not ${args.postLogoutUri}`);
  check(summary.logout.state_matches, `the logout redirect carries state ${back?.searchParams.get('state')}, not the one sent`);

  step('9: after logout');
  summary.after_logout = {
    profile_refreshed: await profileRefused(args, second.access_token, deadline, 'the refreshed access token after logout'),
    profile_first: await profileRefused(args, first.access_token, deadline, 'the first access token after logout'),
    refresh: await refreshRefused(config, second.refresh_token, deadline, 'the newest refresh token after logout'),
  };
}

async function reuse(args, deadline, summary, step) {
  step('1: discovery');
  const config = await discover(args, deadline, summary);
  const saved = readState(args);

  step('2: authorizationCodeGrant');
  const first = await codeGrant(config, args, saved, deadline);
  const claims = first.claims();
  summary.id_token = { sub: claims.sub, aud: claims.aud, sid: claims.sid, auth_time: claims.auth_time };

  step('3: refresh rt1 into rt2');
  const second = await refresh(config, first.refresh_token, deadline, 'refreshing rt1');
  summary.rt2 = {
    profile: (await profileWorks(args, second.access_token, claims, deadline, "rt2's access token")).status,
  };

  step('4: rt1 again');
  summary.rt1_reused = await refreshRefused(config, first.refresh_token, deadline, 'rt1 used a second time');

  step('5: rt2 after the reuse');
  summary.rt2_after_reuse = await refreshRefused(config, second.refresh_token, deadline, 'rt2 after rt1 was reused');

  step('6: the access tokens after the reuse');
  summary.after_reuse = {
    profile_rt2_access_token: await profileRefused(args, second.access_token, deadline, "rt2's access token after the reuse"),
    profile_first_access_token:
      await profileRefused(args, first.access_token, deadline, 'the first access token after the reuse'),
  };
}

const COMMANDS = { start, finish, reuse };

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`oidc_rp: ${err.message}\n`);
    process.exit(2);
  }
  const deadline = new Deadline(args.maxSeconds);
  const summary = { mode: args.mode, steps_passed: [] };
  const current = { step: null };
  const step = (name) => {
    if (current.step !== null) summary.steps_passed.push(current.step);
    current.step = name;
  };
  const failed = (error) => {
    summary.failed_step = current.step;
    summary.error = error;
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    process.stderr.write(`oidc_rp ${args.mode}: step ${current.step}: ${error}\n`);
    process.exit(1);
  };
  // The last resort: a call stuck past every timeout still ends the run.
  setTimeout(() => failed(`still running ${args.maxSeconds + 15}s after the start; giving up`),
    (args.maxSeconds + 15) * 1000).unref();

  try {
    await COMMANDS[args.mode](args, deadline, summary, step);
    step(null);
  } catch (err) {
    failed(err instanceof StepFailed ? err.message : describe(err));
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exit(0);
}

await main();
