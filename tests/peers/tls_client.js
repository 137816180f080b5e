// A second TLS client for the gateway tests: Node's own tls module (Node's bundled OpenSSL).
// node tls_client.js HOST PORT SNI CA_FILE [--cert F --key F] [--tls 1.2|1.3] [--ciphers OPENSSL-LIST]
// Prints one JSON line: {"ok": true, "status": 200, "version": "TLSv1.3"} when GET /health was
// answered, else {"ok": false, "error": "<code or message>"}. Exit code 0 either way.
// --ciphers: offer only these TLS 1.2 suites (e.g. ECDHE-RSA-AES128-GCM-SHA256: an RSA-only
// client); the line then also says which certificate came: "key" ("EC" or "RSA") and "serial".
"use strict";
const fs = require("fs");
const tls = require("tls");

const [host, port, sni, caFile, ...rest] = process.argv.slice(2);
const opt = {};
for (let i = 0; i < rest.length; i += 2) opt[rest[i].replace(/^--/, "")] = rest[i + 1];

const options = { host, port: Number(port), servername: sni, ca: fs.readFileSync(caFile), ALPNProtocols: ["http/1.1"] };
if (opt.cert) {
  options.cert = fs.readFileSync(opt.cert);
  options.key = fs.readFileSync(opt.key);
}
if (opt.tls) options.minVersion = options.maxVersion = `TLSv${opt.tls}`;
if (opt.ciphers) {
  options.ciphers = opt.ciphers;  // TLS 1.2 suites name the server's key algorithm; 1.3 ones do not
  options.maxVersion = "TLSv1.2";
}

let done = false;
function finish(result) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

const socket = tls.connect(options, () => {
  const version = socket.getProtocol();
  const leaf = socket.getPeerCertificate();
  // node names the key by its fields: an EC key has a curve, an RSA key a modulus
  const served = opt.ciphers ? { key: leaf.asn1Curve ? "EC" : leaf.modulus ? "RSA" : "?",
                                 serial: leaf.serialNumber.toLowerCase().replace(/^0+/, "") } : {};
  socket.write(`GET /health HTTP/1.1\r\nHost: ${sni}\r\nConnection: close\r\n\r\n`);
  let data = "";
  socket.on("data", (chunk) => { data += chunk; });
  socket.on("end", () => {
    const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
    finish(m ? { ok: true, status: Number(m[1]), version, ...served }
             : { ok: false, error: "closed without a response", version });
  });
});
socket.on("error", (err) => finish({ ok: false, error: err.code || err.message }));
socket.setTimeout(10000, () => finish({ ok: false, error: "timeout" }));
