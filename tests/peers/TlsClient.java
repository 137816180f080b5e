// A third TLS client for the gateway tests: the JDK's own TLS stack (JSSE), run as a single file
// with `java TlsClient.java HOST PORT SNI CA_FILE [CERT_FILE KEY_FILE] [TLSv1.2|TLSv1.3]`.
// The key is PKCS#8 PEM ("BEGIN PRIVATE KEY"), EC or RSA. Prints one line: "ok STATUS VERSION"
// when GET /health was answered, else "refused EXCEPTION: MESSAGE". Exit code 0 either way.

import java.io.*;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.*;
import java.security.cert.*;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.*;
import javax.net.ssl.*;

public class TlsClient {
    static List<X509Certificate> certs(String file) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<X509Certificate> out = new ArrayList<>();
        try (InputStream in = new FileInputStream(file)) {
            for (java.security.cert.Certificate c : cf.generateCertificates(in)) out.add((X509Certificate) c);
        }
        return out;
    }

    static PrivateKey key(String file) throws Exception {
        String pem = Files.readString(Path.of(file));
        String b64 = pem.replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
        byte[] der = Base64.getDecoder().decode(b64);
        for (String alg : new String[] {"EC", "RSA"}) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception e) {
                // try the next algorithm
            }
        }
        throw new IllegalArgumentException("not a PKCS#8 EC or RSA key: " + file);
    }

    public static void main(String[] args) throws Exception {
        String host = args[0], sni = args[2], caFile = args[3];
        int port = Integer.parseInt(args[1]);
        String protocol = null, certFile = null, keyFile = null;
        int i = 4;
        if (args.length > i + 1 && !args[i].startsWith("TLS")) { certFile = args[i]; keyFile = args[i + 1]; i += 2; }
        if (args.length > i) protocol = args[i];

        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int n = 0;
        for (X509Certificate c : certs(caFile)) trust.setCertificateEntry("ca" + n++, c);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        KeyManager[] kms = null;
        if (certFile != null) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            char[] pw = "x".toCharArray();
            ks.setKeyEntry("client", key(keyFile), pw, certs(certFile).toArray(new X509Certificate[0]));
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pw);
            kms = kmf.getKeyManagers();
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kms, tmf.getTrustManagers(), null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(host, port)) {
            s.setSoTimeout(10000);
            SSLParameters p = s.getSSLParameters();
            p.setServerNames(List.of(new SNIHostName(sni)));
            p.setEndpointIdentificationAlgorithm("HTTPS");  // the host name against the SANs
            p.setApplicationProtocols(new String[] {"http/1.1"});
            if (protocol != null) p.setProtocols(new String[] {protocol});
            // -Dkimpki.cipherSuite=TLS_ECDHE_RSA_...: offer only this TLS 1.2 suite (the line then
            // ends with the served key's algorithm, EC or RSA, and the leaf's serial in hex)
            String suite = System.getProperty("kimpki.cipherSuite");
            if (suite != null) {
                p.setProtocols(new String[] {"TLSv1.2"});
                p.setCipherSuites(new String[] {suite});
            }
            s.setSSLParameters(p);
            s.startHandshake();
            // TLS 1.3: the server judges our certificate after our handshake completed; hear a
            // refusal before writing, or the request meets a closed socket and the alert is lost.
            PushbackInputStream raw = new PushbackInputStream(s.getInputStream(), 1);
            s.setSoTimeout(500);
            try {
                int b = raw.read();
                if (b < 0) throw new EOFException("closed right after the handshake");
                raw.unread(b);
            } catch (SocketTimeoutException quiet) {
                // no verdict within 0.5 s: accepted
            }
            s.setSoTimeout(10000);
            OutputStream out = s.getOutputStream();
            out.write(("GET /health HTTP/1.1\r\nHost: " + sni + "\r\nConnection: close\r\n\r\n")
                    .getBytes(StandardCharsets.US_ASCII));
            out.flush();
            BufferedReader in = new BufferedReader(new InputStreamReader(raw, StandardCharsets.US_ASCII));
            String status = in.readLine();
            if (status == null) throw new EOFException("closed without a response");
            String served = "";
            if (suite != null) {
                X509Certificate leaf = (X509Certificate) s.getSession().getPeerCertificates()[0];
                served = " " + leaf.getPublicKey().getAlgorithm() + " " + leaf.getSerialNumber().toString(16);
            }
            System.out.println("ok " + status.split(" ")[1] + " " + s.getSession().getProtocol() + served);
        } catch (IOException e) {
            System.out.println("refused " + e.getClass().getSimpleName() + ": " + e.getMessage());
        }
    }
}
