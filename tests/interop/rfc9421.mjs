#!/usr/bin/env node
// Independent RFC 9421 (HTTP Message Signatures) + RFC 9530 (Content-Digest) harness.
//
// It uses the npm package `http-message-signatures` (dhensby, 1.x) for signing and verifying,
// `structured-headers` (RFC 8941/9651, the same one that library uses) for structured fields and
// node's own crypto for Ed25519 and SHA-256. It shares no code with the project's Python signing
// code: it is the "independent implementation" in the interop tests.
//
// Protocol: read ONE JSON object on stdin, write ONE JSON object on stdout.
//
//   {"op":"sign_request","method","url","headers","body","private_seed_hex","keyid",
//    "created","expires","nonce"}                      -> {"headers": {...}, "signature_base": "..."}
//   {"op":"sign_response","status","headers","body","private_seed_hex","keyid","created"[,"request"]}
//                                                      -> {"headers": {...}, "signature_base": "..."}
//   {"op":"verify_request","method","url","headers","body","public_key_b64url","now"}
//   {"op":"verify_response","status","headers","body","public_key_b64url","now"[,"request"]}
//                                                      -> {"ok": true} | {"ok": false, "error": "..."}
//
// "request" ({"method","url","headers"}): the signed request the response answers. Then the
// response is bound to it with RFC 9421's `req` parameter (section 2.4): it also covers
// "@path";req "content-digest";req "signature";req;key="yp", and a verifier given a request
// requires exactly those components.
//
// A malformed command (bad JSON, unknown op, missing field, bad key) gives {"error": "..."} and
// exit status 2; a verification that fails is a normal answer ({"ok": false}) with exit status 0.

import { createHash, createPrivateKey, createPublicKey, timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { httpbis, createSigner, createVerifier } = require('http-message-signatures');
const sf = require('structured-headers');

const LABEL = 'yp';
const TAG = 'yipanqi/1';
const ALG = 'ed25519';
const MAX_SKEW = 300; // seconds: docs/protocol.md, "created within 300 s of the receiver's clock"

const REQUEST_FIELDS = ['@method', '@path', 'content-type', 'content-digest'];
const REQUEST_PARAMS = ['created', 'expires', 'nonce', 'keyid', 'alg', 'tag'];
const RESPONSE_FIELDS = ['@status', 'content-type', 'content-digest'];
const RESPONSE_PARAMS = ['created', 'keyid', 'alg', 'tag'];
const BOUND_RESPONSE_FIELDS = [...RESPONSE_FIELDS, '"@path";req', '"content-digest";req', `"signature";req;key="${LABEL}"`];

class UsageError extends Error {}

// ---------------------------------------------------------------------------------------------
// keys

// RFC 8410 PrivateKeyInfo for Ed25519: a fixed 16-byte DER prefix followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

function privateKeyFromSeedHex(seedHex) {
  if (typeof seedHex !== 'string' || !/^[0-9a-fA-F]{64}$/.test(seedHex)) {
    throw new UsageError('private_seed_hex must be 64 hex digits (a 32-byte Ed25519 seed)');
  }
  const der = Buffer.concat([PKCS8_ED25519_PREFIX, Buffer.from(seedHex, 'hex')]);
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}

function publicKeyFromB64url(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(text)) {
    throw new UsageError('public_key_b64url must be 43 base64url characters (32 raw bytes, no padding)');
  }
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: text }, format: 'jwk' });
}

// ---------------------------------------------------------------------------------------------
// helpers

function requireField(cmd, name, type) {
  const value = cmd[name];
  const ok = type === 'integer' ? Number.isSafeInteger(value)
    : type === 'object' ? value !== null && typeof value === 'object' && !Array.isArray(value)
      : typeof value === type;
  if (!ok) {
    throw new UsageError(`field "${name}" must be ${type === 'integer' ? 'an integer' : `a ${type}`}`);
  }
  return value;
}

function headersOf(cmd) {
  const headers = requireField(cmd, 'headers', 'object');
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== 'string') {
      throw new UsageError(`header "${name}" must be a string`);
    }
  }
  return headers;
}

function findHeader(headers, lcName) {
  const entry = Object.entries(headers).find(([name]) => name.toLowerCase() === lcName);
  return entry ? entry[1] : undefined;
}

function withoutHeaders(headers, lcNames) {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !lcNames.includes(name.toLowerCase())));
}

// The library derives @path from a URL; accept an absolute URL or an origin-form path.
function requestUrl(url) {
  try {
    return url.startsWith('/') ? new URL(url, 'http://localhost') : new URL(url);
  } catch {
    throw new UsageError(`url is not a URL or an absolute path: ${url}`);
  }
}

function sha256(bytes) {
  const digest = createHash('sha256').update(bytes).digest();
  return digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.byteLength);
}

// RFC 9530: Content-Digest is a structured-field Dictionary, algorithm -> byte sequence.
function contentDigest(body) {
  return sf.serializeDictionary(new Map([['sha-256', [sha256(Buffer.from(body, 'utf8')), new Map()]]]));
}

function checkContentDigest(headers, body) {
  const value = findHeader(headers, 'content-digest');
  if (value === undefined) {
    return 'Content-Digest header missing';
  }
  let dict;
  try {
    dict = sf.parseDictionary(value);
  } catch (e) {
    return `Content-Digest is not a structured-field dictionary: ${e.message}`;
  }
  const entry = dict.get('sha-256');
  if (!entry || !(entry[0] instanceof ArrayBuffer)) {
    return 'Content-Digest has no sha-256 byte sequence';
  }
  const expected = Buffer.from(sha256(Buffer.from(body, 'utf8')));
  const given = Buffer.from(entry[0]);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return 'Content-Digest does not match the body';
  }
  return null;
}

// Keep only the `yp` member of Signature / Signature-Input, so that no other label can stand in
// for it (the library would otherwise accept any one signature that verifies).
function onlyOurSignature(headers) {
  const sig = findHeader(headers, 'signature');
  const input = findHeader(headers, 'signature-input');
  if (sig === undefined || input === undefined) {
    throw new Error('Signature or Signature-Input header missing');
  }
  const sigDict = sf.parseDictionary(sig);
  const inputDict = sf.parseDictionary(input);
  if (!sigDict.has(LABEL) || !inputDict.has(LABEL)) {
    throw new Error(`no signature labelled "${LABEL}"`);
  }
  const params = inputDict.get(LABEL)[1];
  if (params.get('tag') !== TAG) {
    throw new Error(`tag is not "${TAG}"`);
  }
  if (params.get('alg') !== ALG) {
    throw new Error(`alg is not "${ALG}"`);
  }
  return {
    ...withoutHeaders(headers, ['signature', 'signature-input']),
    'Signature': sf.serializeDictionary(new Map([[LABEL, sigDict.get(LABEL)]])),
    'Signature-Input': sf.serializeDictionary(new Map([[LABEL, inputDict.get(LABEL)]])),
  };
}

// The signature base the library builds for an already signed message (for diagnostics/tests).
function signatureBaseOf(message, req) {
  const input = sf.parseDictionary(findHeader(message.headers, 'signature-input')).get(LABEL);
  const fields = input[0].map((item) => sf.serializeItem(item));
  const base = httpbis.createSignatureBase({ fields }, message, req);
  base.push(['"@signature-params"', [sf.serializeList([input])]]);
  return httpbis.formatSignatureBase(base);
}

// ---------------------------------------------------------------------------------------------
// operations

async function sign(message, fields, params, paramValues, seedHex, keyid, req) {
  const key = createSigner(privateKeyFromSeedHex(seedHex), ALG, keyid);
  const signed = await httpbis.signMessage({ key, name: LABEL, fields, params, paramValues }, message, req);
  return { headers: signed.headers, signature_base: signatureBaseOf(signed, req) };
}

// The request a response answers ("request" in the command), as the library takes it; or undefined.
function boundRequest(cmd) {
  if (cmd.request === undefined) {
    return undefined;
  }
  const request = requireField(cmd, 'request', 'object');
  return {
    method: requireField(request, 'method', 'string'),
    url: requestUrl(requireField(request, 'url', 'string')),
    headers: headersOf(request),
  };
}

// The covered components: a response bound to a request covers the bound ones (the library takes
// a component identifier with parameters, '"@path";req', as it takes a plain name).
function fieldsOf(req, fields, bound) {
  return req === undefined ? fields : bound;
}

// The library's requiredFields compares names only ("@path" and "@path";req alike), so a response
// that must be bound is checked here to cover exactly the bound identifiers, in order.
function coversExactly(headers, identifiers) {
  const input = sf.parseDictionary(findHeader(headers, 'signature-input')).get(LABEL);
  const covered = input[0].map((item) => sf.serializeItem(item));
  const wanted = identifiers.map((f) => (f.startsWith('"') ? f : `"${f}"`));
  return covered.length === wanted.length && covered.every((c, i) => c === wanted[i]);
}

async function signRequest(cmd) {
  const body = requireField(cmd, 'body', 'string');
  const headers = {
    ...withoutHeaders(headersOf(cmd), ['content-digest', 'signature', 'signature-input']),
    'Content-Digest': contentDigest(body),
  };
  const message = {
    method: requireField(cmd, 'method', 'string'),
    url: requestUrl(requireField(cmd, 'url', 'string')),
    headers,
  };
  const paramValues = {
    created: new Date(requireField(cmd, 'created', 'integer') * 1000),
    expires: new Date(requireField(cmd, 'expires', 'integer') * 1000),
    nonce: requireField(cmd, 'nonce', 'string'),
    keyid: requireField(cmd, 'keyid', 'string'),
    alg: ALG,
    tag: TAG,
  };
  return sign(message, REQUEST_FIELDS, REQUEST_PARAMS, paramValues, cmd.private_seed_hex, cmd.keyid);
}

async function signResponse(cmd) {
  const body = requireField(cmd, 'body', 'string');
  const headers = {
    ...withoutHeaders(headersOf(cmd), ['content-digest', 'signature', 'signature-input']),
    'Content-Digest': contentDigest(body),
  };
  const message = { status: requireField(cmd, 'status', 'integer'), headers };
  const paramValues = {
    created: new Date(requireField(cmd, 'created', 'integer') * 1000),
    keyid: requireField(cmd, 'keyid', 'string'),
    alg: ALG,
    tag: TAG,
  };
  const req = boundRequest(cmd);
  const fields = fieldsOf(req, RESPONSE_FIELDS, BOUND_RESPONSE_FIELDS);
  return sign(message, fields, RESPONSE_PARAMS, paramValues, cmd.private_seed_hex, cmd.keyid, req);
}

async function verify(message, body, fields, params, publicKeyText, now, req) {
  const publicKey = publicKeyFromB64url(publicKeyText);
  const realNow = Date.now;
  try {
    const headers = onlyOurSignature(message.headers);
    if (req !== undefined && !coversExactly(headers, fields)) {
      return { ok: false, error: 'the response is not bound to the request (covered components)' };
    }
    // The library reads the clock through Date.now(); pin it to the caller's "now" so fixed test
    // vectors (whose created/expires lie in the past) can be verified. One process, one call.
    Date.now = () => now * 1000;
    const verified = await httpbis.verifyMessage({
      keyLookup: async () => ({ id: undefined, algs: [ALG], verify: createVerifier(publicKey, ALG) }),
      requiredFields: fields.map((f) => (f.startsWith('"') ? sf.parseItem(f)[0] : f)),
      requiredParams: params,
      notAfter: now + MAX_SKEW, // created may lie at most MAX_SKEW s in the receiver's future
      maxAge: MAX_SKEW, // ... and at most MAX_SKEW s in its past
      tolerance: 0,
    }, { ...message, headers }, req);
    if (verified !== true) {
      return { ok: false, error: 'signature does not verify' };
    }
  } catch (e) {
    return { ok: false, error: `${e.constructor?.name ?? e.name}: ${e.message}` };
  } finally {
    Date.now = realNow;
  }
  const digestError = checkContentDigest(message.headers, body);
  return digestError ? { ok: false, error: digestError } : { ok: true };
}

async function verifyRequest(cmd) {
  const message = {
    method: requireField(cmd, 'method', 'string'),
    url: requestUrl(requireField(cmd, 'url', 'string')),
    headers: headersOf(cmd),
  };
  return verify(message, requireField(cmd, 'body', 'string'), REQUEST_FIELDS, REQUEST_PARAMS,
    cmd.public_key_b64url, requireField(cmd, 'now', 'integer'));
}

async function verifyResponse(cmd) {
  const message = { status: requireField(cmd, 'status', 'integer'), headers: headersOf(cmd) };
  const req = boundRequest(cmd);
  const fields = fieldsOf(req, RESPONSE_FIELDS, BOUND_RESPONSE_FIELDS);
  return verify(message, requireField(cmd, 'body', 'string'), fields, RESPONSE_PARAMS,
    cmd.public_key_b64url, requireField(cmd, 'now', 'integer'), req);
}

const OPS = {
  sign_request: signRequest,
  sign_response: signResponse,
  verify_request: verifyRequest,
  verify_response: verifyResponse,
};

// ---------------------------------------------------------------------------------------------
// main

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  let result;
  let status = 0;
  try {
    let cmd;
    try {
      cmd = JSON.parse(await readStdin());
    } catch (e) {
      throw new UsageError(`stdin is not one JSON object: ${e.message}`);
    }
    if (cmd === null || typeof cmd !== 'object' || !Object.hasOwn(OPS, cmd.op)) {
      throw new UsageError(`unknown op; expected one of ${Object.keys(OPS).join(', ')}`);
    }
    result = await OPS[cmd.op](cmd);
  } catch (e) {
    result = { error: e instanceof UsageError ? e.message : `${e.constructor?.name ?? e.name}: ${e.message}` };
    status = 2;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = status;
}

await main();
