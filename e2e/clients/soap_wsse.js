// A Node.js client with WS-Security, as one would write it: the npm `soap`
// package, pointed at nothing but the lookup service's WSDL URL, signs in with
// its WSSecurity (an OASIS WSS UsernameToken, PasswordText, with a Nonce, a
// Created and a wsu:Timestamp) and looks a user up.
//
//   node e2e/clients/soap_wsse.js LOOKUP_WSDL_URL USERNAME PASSWORD LOOKUP_NAME
//
// Then it replays that very request, byte for byte (same Nonce), and expects
// HTTP 500 with the faultcode wsse:InvalidSecurity and MESSAGE_REPLAYED; and
// it expects a PasswordDigest token to be refused (UNSUPPORTED_SECURITY_TOKEN).
// Exits non-zero, saying why, on the first thing that is not as it should be.
// Its dependencies are pinned by package-lock.json (npm ci --prefix e2e/clients).

'use strict';

const soap = require('soap');

const WSSE = 'http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd';

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

// The first text of an element named `local` (any prefix) in a SOAP answer.
function textOf(xml, local) {
  const match = new RegExp(`<(?:[\\w.-]+:)?${local}\\b[^>]*>\\s*([^<]*?)\\s*</`).exec(xml);
  return match ? match[1] : undefined;
}

// What a SOAP 1.1 fault says: its faultcode as sent and as {namespace}local
// (the prefix resolved against the declarations in the answer), its
// ErrorCode, its faultstring.
function faultOf(xml) {
  const faultcode = textOf(xml, 'faultcode');
  let resolved;
  if (faultcode !== undefined) {
    const [prefix, local] = faultcode.includes(':') ? faultcode.split(':', 2) : ['', faultcode];
    const declared = new RegExp(`xmlns${prefix ? ':' + prefix : ''}="([^"]*)"`).exec(xml);
    resolved = `{${declared ? declared[1] : ''}}${local}`;
  }
  return { faultcode, resolved, errorCode: textOf(xml, 'ErrorCode'), message: textOf(xml, 'faultstring') };
}

function expectFault(status, xml, { httpStatus, code, errorCode }, what) {
  const fault = faultOf(String(xml || ''));
  check(status === httpStatus, `${what}: expected HTTP ${httpStatus}, got ${status}: ${xml}`);
  check(fault.resolved === `{${WSSE}}${code}`,
    `${what}: expected faultcode wsse:${code}, got ${fault.faultcode} (${fault.resolved}): ${xml}`);
  check(fault.errorCode === errorCode, `${what}: expected ErrorCode ${errorCode}, got ${fault.errorCode}: ${xml}`);
  check(textOf(xml, 'RequestId'), `${what}: no RequestId in ${xml}`);
  return fault;
}

function header(headers, name) {
  if (!headers) return undefined;
  if (typeof headers.get === 'function') return headers.get(name);
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name.toLowerCase());
  return key === undefined ? undefined : headers[key];
}

async function main() {
  const [wsdl, username, password, lookupName] = process.argv.slice(2);
  check(lookupName, 'usage: node soap_wsse.js LOOKUP_WSDL_URL USERNAME PASSWORD LOOKUP_NAME');

  const client = await soap.createClientAsync(wsdl);
  client.setSecurity(new soap.WSSecurity(username, password, {
    passwordType: 'PasswordText',
    hasTimeStamp: true,
    hasNonce: true,
  }));
  const [found] = await client.LookupUserAsync({ username: lookupName });
  check(found && typeof found.username === 'string' && found.username.toLowerCase() === lookupName.toLowerCase(),
    `looked up ${lookupName}, got ${JSON.stringify(found)}`);
  check(found.userId, `no userId in ${JSON.stringify(found)}`);
  console.log(`npm soap WSSecurity: PasswordText with Nonce and Timestamp looks ${found.username} up (${found.userId})`);

  // The same message again, byte for byte: the Nonce (and Created) it carries
  // were seen already.
  const replayed = client.lastRequest;
  const soapAction = header(client.lastRequestHeaders, 'SOAPAction');
  check(soapAction, `the first call sent no SOAPAction header: ${JSON.stringify(client.lastRequestHeaders)}`);
  check(replayed.includes('<wsse:Nonce'), `the first call sent no Nonce: ${replayed}`);
  const answer = await fetch(client.lastEndpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'text/xml; charset=utf-8', 'SOAPAction': soapAction },
    body: replayed,
  });
  expectFault(answer.status, await answer.text(),
    { httpStatus: 500, code: 'InvalidSecurity', errorCode: 'MESSAGE_REPLAYED' }, 'the replayed request');
  console.log('npm soap WSSecurity: the same request replayed is refused (wsse:InvalidSecurity, MESSAGE_REPLAYED)');

  client.setSecurity(new soap.WSSecurity(username, password, { passwordType: 'PasswordDigest' }));
  let refusal;
  try {
    const [result] = await client.LookupUserAsync({ username: lookupName });
    throw new Failure(`a PasswordDigest token was taken: ${JSON.stringify(result)}`);
  } catch (error) {
    if (error instanceof Failure) throw error;
    if (!error.response) throw error;
    refusal = expectFault(error.response.status, error.body ?? error.response.data,
      { httpStatus: 500, code: 'UnsupportedSecurityToken', errorCode: 'UNSUPPORTED_SECURITY_TOKEN' },
      'a PasswordDigest token');
  }
  check(/PasswordDigest/.test(refusal.message || ''), `the refusal does not name PasswordDigest: ${refusal.message}`);
  console.log('npm soap WSSecurity: PasswordDigest is refused (wsse:UnsupportedSecurityToken, UNSUPPORTED_SECURITY_TOKEN)');
}

main().catch((error) => {
  console.error(`soap_wsse.js: ${error instanceof Failure ? error.message : (error && error.stack) || error}`);
  process.exit(1);
});
