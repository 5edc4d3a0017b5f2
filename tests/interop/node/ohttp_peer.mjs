// An independent Oblivious HTTP peer for Veil's interop tests, written against RFC 9458, RFC 9292
// and draft-ietf-ohai-chunked-ohttp-08 with nothing of Veil's: HPKE and X-Wing come from the npm
// packages @hpke/core and @hpke/hybridkem-x-wing, AES-GCM and HKDF from Node's WebCrypto.
//
//   node ohttp_peer.mjs client   < {"gateway": url, "keys": hex, "chunked": bool, "request": {...}}
//       fetches nothing else: encrypts the request to the X-Wing configuration in `keys` (an
//       application/ohttp-keys body), POSTs it to the gateway, decrypts and prints the answer.
//   node ohttp_peer.mjs gateway  < {"seed": hex, "key_id": n, "media": type, "body": hex, "reply": {...}}
//       opens a request a Veil client encrypted to the X-Wing key with that 32-byte seed, prints
//       what it read, and prints the encrypted reply for the client to open.
//
// Keys cross as serialised seeds and public keys: these packages derive key pairs from IKM
// differently from draft-ietf-hpke-pq, so no derivation is shared.
import { Aes256Gcm, CipherSuite, HkdfSha256 } from "@hpke/core";
import { XWing } from "@hpke/hybridkem-x-wing";

const KEM_XWING = 0x647a;
const KDF_HKDF_SHA256 = 0x0001;
const AEAD_AES_256_GCM = 0x0002;
const NK = 32, NN = 12, NENC = 1120, NPK = 1216;
const te = new TextEncoder(), td = new TextDecoder();
const LABELS = {
  req: te.encode("message/bhttp request"),
  res: te.encode("message/bhttp response"),
  creq: te.encode("message/bhttp chunked request"),
  cres: te.encode("message/bhttp chunked response"),
};
const FINAL = te.encode("final");

const suite = new CipherSuite({ kem: new XWing(), kdf: new HkdfSha256(), aead: new Aes256Gcm() });

// -- bytes -----------------------------------------------------------------------------------
const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
function varint(n) {
  if (n < 0x40) return Uint8Array.of(n);
  if (n < 0x4000) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  if (n < 0x40000000) return Uint8Array.of(0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
  throw new Error("varint too large for this peer");
}
class Reader {
  constructor(buf) { this.buf = buf; this.pos = 0; }
  get left() { return this.buf.length - this.pos; }
  take(n) {
    if (n > this.left) throw new Error("truncated");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  varint() {
    const first = this.take(1)[0];
    const len = 1 << (first >> 6);
    let v = first & 0x3f;
    for (const b of this.take(len - 1)) v = v * 256 + b;
    return v;
  }
  lp() { return this.take(this.varint()); }
  u16() { const [a, b] = this.take(2); return (a << 8) | b; }
  lp16() { return this.take(this.u16()); } // RFC 9458 §3: lengths in key configurations are 2 bytes
}

// -- Binary HTTP (RFC 9292), the parts an OHTTP exchange needs --------------------------------
function encodeFields(fields) {
  return concat(...fields.map(([n, v]) => concat(varint(n.length), te.encode(n), varint(te.encode(v).length), te.encode(v))));
}
function encodeRequest({ method, scheme, authority, path, headers, body }, indeterminate) {
  const control = [method, scheme, authority, path].map((s) => concat(varint(s.length), te.encode(s)));
  const content = te.encode(body);
  if (!indeterminate) {
    const f = encodeFields(headers);
    return concat(varint(0), ...control, varint(f.length), f, varint(content.length), content, varint(0));
  }
  return concat(varint(2), ...control, encodeFields(headers), varint(0),
                varint(content.length), content, varint(0), varint(0));
}
function encodeResponse({ status, headers, body }, indeterminate) {
  const content = te.encode(body);
  if (!indeterminate) {
    const f = encodeFields(headers);
    return concat(varint(1), varint(status), varint(f.length), f, varint(content.length), content, varint(0));
  }
  return concat(varint(3), varint(status), encodeFields(headers), varint(0),
                varint(content.length), content, varint(0), varint(0));
}
function readFields(r, indeterminate) {
  const fields = [];
  const section = indeterminate ? r : new Reader(r.lp());
  while (section.left > 0) {
    const nameLen = section.varint();
    if (indeterminate && nameLen === 0) break;
    fields.push([td.decode(section.take(nameLen)), td.decode(section.lp())]);
  }
  return fields;
}
function readContent(r, indeterminate) {
  if (!indeterminate) return r.left ? r.lp() : new Uint8Array();
  const parts = [];
  for (let n = r.varint(); n !== 0; n = r.varint()) parts.push(r.take(n));
  return concat(...parts);
}
function expectPadding(r) {
  for (const b of r.take(r.left)) if (b !== 0) throw new Error("non-zero padding");
}
function decodeRequest(buf) {
  const r = new Reader(buf);
  const framing = r.varint();
  if (framing !== 0 && framing !== 2) throw new Error(`not a request: framing ${framing}`);
  const ind = framing === 2;
  const [method, scheme, authority, path] = [0, 1, 2, 3].map(() => td.decode(r.lp()));
  const headers = readFields(r, ind);
  const body = td.decode(readContent(r, ind));
  if (r.left) readFields(r, ind); // trailers
  expectPadding(r);
  return { method, scheme, authority, path, headers, body };
}
function decodeResponse(buf) {
  const r = new Reader(buf);
  const framing = r.varint();
  if (framing !== 1 && framing !== 3) throw new Error(`not a response: framing ${framing}`);
  const ind = framing === 3;
  let status = r.varint();
  while (status >= 100 && status < 200) { readFields(r, ind); status = r.varint(); }
  const headers = readFields(r, ind);
  const body = td.decode(readContent(r, ind));
  if (r.left) readFields(r, ind);
  expectPadding(r);
  return { status, headers, body };
}

// -- OHTTP (RFC 9458) and chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08) ----------------------
const header = (keyId) => Uint8Array.of(keyId, KEM_XWING >> 8, KEM_XWING & 0xff, 0, KDF_HKDF_SHA256, 0, AEAD_AES_256_GCM);
const info = (label, hdr) => concat(label, Uint8Array.of(0), hdr);

// RFC 9458 §4.4: key and nonce from Export(label, max(Nk, Nn)), salt enc || response_nonce.
async function responseAead(ctx, enc, responseNonce, label) {
  const secret = new Uint8Array(await ctx.export(label, Math.max(NK, NN)));
  const ikm = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
  const salt = concat(enc, responseNonce);
  const derive = async (what, n) => new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt, info: te.encode(what) }, ikm, 8 * n));
  const key = await crypto.subtle.importKey("raw", await derive("key", NK), "AES-GCM", false, ["encrypt", "decrypt"]);
  const base = await derive("nonce", NN);
  const nonce = (i) => { const n = base.slice(); for (let k = 0; k < 6; k++) n[NN - 1 - k] ^= Math.floor(i / 256 ** k) & 0xff; return n; };
  return {
    seal: async (pt, i = 0, aad = new Uint8Array()) =>
      new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce(i), additionalData: aad }, key, pt)),
    open: async (ct, i = 0, aad = new Uint8Array()) =>
      new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce(i), additionalData: aad }, key, ct)),
  };
}

// Splits "(varint len || ct)* || 0 || final" into its records; returns [chunks, final].
function splitChunks(buf) {
  const r = new Reader(buf);
  const chunks = [];
  for (;;) {
    const n = r.varint();
    if (n === 0) return [chunks, r.take(r.left)];
    chunks.push(r.take(n));
  }
}

// The X-Wing entry of an application/ohttp-keys body (RFC 9458 §3.2).
function xwingConfig(keys) {
  const r = new Reader(keys);
  while (r.left) {
    const c = new Reader(r.lp16());
    const keyId = c.take(1)[0];
    const kem = c.u16();
    if (kem !== KEM_XWING) continue;
    const publicKey = c.take(NPK);
    const algs = new Reader(c.lp16());
    const suites = [];
    while (algs.left) suites.push([algs.u16(), algs.u16()]);
    if (!suites.some(([k, a]) => k === KDF_HKDF_SHA256 && a === AEAD_AES_256_GCM)) throw new Error("no AES-256-GCM");
    return { keyId, publicKey };
  }
  throw new Error("the served keys have no X-Wing configuration");
}

async function client({ gateway, keys, chunked, request }) {
  const { keyId, publicKey } = xwingConfig(unhex(keys));
  const hdr = header(keyId);
  const recipientPublicKey = await suite.kem.deserializePublicKey(publicKey);
  const sender = await suite.createSenderContext({ recipientPublicKey, info: info(chunked ? LABELS.creq : LABELS.req, hdr) });
  const enc = new Uint8Array(sender.enc);
  const inner = encodeRequest(request, chunked);
  let body;
  if (!chunked) {
    body = concat(hdr, enc, new Uint8Array(await sender.seal(inner)));
  } else { // two chunks: everything but the last byte, then the last byte as the final chunk
    const first = new Uint8Array(await sender.seal(inner.subarray(0, inner.length - 1)));
    const last = new Uint8Array(await sender.seal(inner.subarray(inner.length - 1), FINAL));
    body = concat(hdr, enc, varint(first.length), first, varint(0), last);
  }
  const resp = await fetch(gateway, {
    method: "POST", body,
    headers: { "content-type": chunked ? "message/ohttp-chunked-req" : "message/ohttp-req" },
  });
  const outer = new Uint8Array(await resp.arrayBuffer());
  const media = resp.headers.get("content-type");
  if (resp.status !== 200) return { outer_status: resp.status, outer_body: td.decode(outer) };
  const n = Math.max(NK, NN);
  const aead = await responseAead(sender, enc, outer.subarray(0, n), chunked ? LABELS.cres : LABELS.res);
  if (!chunked) return { media, chunks: 0, ...decodeResponse(await aead.open(outer.subarray(n))) };
  const [chunks, final] = splitChunks(outer.subarray(n));
  const plain = [];
  for (const [i, ct] of chunks.entries()) {
    const pt = await aead.open(ct, i);
    if (pt.length === 0) throw new Error("empty non-final chunk"); // draft -08 §6
    plain.push(pt);
  }
  plain.push(await aead.open(final, chunks.length, FINAL));
  return { media, chunks: chunks.length, ...decodeResponse(concat(...plain)) };
}

async function gateway({ seed, key_id, media, body, reply }) {
  const data = unhex(body);
  const r = new Reader(data);
  const hdr = r.take(7);
  if (hdr[0] !== key_id || ((hdr[1] << 8) | hdr[2]) !== KEM_XWING) throw new Error("not for this X-Wing key");
  if (((hdr[3] << 8) | hdr[4]) !== KDF_HKDF_SHA256 || ((hdr[5] << 8) | hdr[6]) !== AEAD_AES_256_GCM) {
    throw new Error("unexpected suite");
  }
  const enc = r.take(NENC);
  const chunked = media === "message/ohttp-chunked-req";
  const recipientKey = await suite.kem.deserializePrivateKey(unhex(seed));
  const ctx = await suite.createRecipientContext({ recipientKey, enc, info: info(chunked ? LABELS.creq : LABELS.req, hdr) });
  let inner;
  if (!chunked) {
    inner = new Uint8Array(await ctx.open(r.take(r.left)));
  } else {
    const [chunks, final] = splitChunks(r.take(r.left));
    const parts = [];
    for (const ct of chunks) parts.push(new Uint8Array(await ctx.open(ct)));
    parts.push(new Uint8Array(await ctx.open(final, FINAL)));
    inner = concat(...parts);
  }
  const request = decodeRequest(inner);
  const nonce = crypto.getRandomValues(new Uint8Array(Math.max(NK, NN)));
  const aead = await responseAead(ctx, enc, nonce, chunked ? LABELS.cres : LABELS.res);
  const message = encodeResponse(reply, chunked);
  let out;
  if (!chunked) {
    out = concat(nonce, await aead.seal(message));
  } else { // three non-final chunks of the answer, then an empty final chunk
    const cut = [0, 3, Math.floor(message.length / 2), message.length];
    const records = [];
    for (let i = 0; i < 3; i++) {
      const ct = await aead.seal(message.subarray(cut[i], cut[i + 1]), i);
      records.push(varint(ct.length), ct);
    }
    out = concat(nonce, ...records, varint(0), await aead.seal(new Uint8Array(), 3, FINAL));
  }
  return { request, media: chunked ? "message/ohttp-chunked-res" : "message/ohttp-res", body: hex(out) };
}

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const mode = process.argv[2];
const result = mode === "client" ? await client(input) : mode === "gateway" ? await gateway(input) : null;
if (result === null) throw new Error(`unknown mode ${mode}`);
process.stdout.write(JSON.stringify(result));
