/*
 * Runs Neo4j Community 5.26 embedded, with the Bolt connector on, as a local
 * stand-in for a Neo4j server.
 *
 * Why this exists: the stack must come up on a bare Debian machine without
 * Docker, and the only reachable sources are package registries. The Neo4j
 * server tarball is not on Maven Central (nor in Debian), but the embedded
 * DBMS and its Bolt server are, so this small main() plus scripts/stack.sh
 * give the Rust code a real Bolt endpoint with real auth.
 *
 * Usage: java -cp 'lib/neo4j/*:lib/neo4j-launcher' Launcher <home-dir>
 * Env:   NEO4J_PASSWORD (required), NEO4J_BOLT_HOST (127.0.0.1),
 *        NEO4J_BOLT_PORT (7687), NEO4J_PAGECACHE (512m),
 *        NEO4J_TLS_DIR (unset: no TLS; else a folder with private.key, a PKCS#8
 *        PEM key, and public.crt: Bolt then speaks TLS too, on the same port,
 *        tls_level OPTIONAL, so plaintext clients keep working)
 *
 * Prints "NEO4J READY pid=<pid>" once Bolt is listening AND the neo4j user has
 * the configured password, so stack.sh never lets clients in before that.
 */

import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

public final class Launcher {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Launcher <home-dir>");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        String password = System.getenv("NEO4J_PASSWORD");
        if (password == null || password.length() < 8) {
            // Neo4j 5 rejects passwords shorter than 8 characters.
            System.err.println("NEO4J_PASSWORD must be set (>= 8 chars)");
            System.exit(2);
        }
        String host = env("NEO4J_BOLT_HOST", "127.0.0.1");
        int port = Integer.parseInt(env("NEO4J_BOLT_PORT", "7687"));
        long pageCache = parseSize(env("NEO4J_PAGECACHE", "512m"));

        String tlsDir = System.getenv("NEO4J_TLS_DIR");
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
        if (tlsDir != null && !tlsDir.isEmpty()) {
            // Embedded Neo4j has one Bolt connector: OPTIONAL lets the plaintext tests and
            // the TLS ones share it (REQUIRED would refuse every plaintext client).
            SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
            Path dir = Path.of(tlsDir).toAbsolutePath();
            builder.setConfig(bolt.enabled, true)
                    .setConfig(bolt.base_directory, dir)
                    .setConfig(bolt.private_key, dir.resolve("private.key"))
                    .setConfig(bolt.public_certificate, dir.resolve("public.crt"))
                    .setConfig(bolt.trusted_dir, dir.resolve("trusted"))
                    .setConfig(bolt.revoked_dir, dir.resolve("revoked"))
                    .setConfig(bolt.client_auth, ClientAuth.NONE)
                    .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.OPTIONAL);
        }
        DatabaseManagementService dbms = builder
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.pagecache_memory, pageCache)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress(host, port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress(host, port))
                // Bolt waits 5 s + 5 s for idle pools/connections on shutdown by
                // default; 1 s each makes stop/start cycles in tests quick.
                .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofSeconds(1))
                .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofSeconds(1))
                // no usage pings home (there is no internet here anyway)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .build();

        CountDownLatch stopped = new CountDownLatch(1);
        // SIGTERM (stack.sh down/stop) -> clean shutdown, so data survives restarts.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("NEO4J shutting down");
            try {
                dbms.shutdown();
            } finally {
                System.out.println("NEO4J stopped");
                stopped.countDown();
            }
        }, "neo4j-shutdown"));

        setPassword(dbms, password);
        // Make sure the default database is really available before "ready".
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        System.out.println("NEO4J READY pid=" + ProcessHandle.current().pid()
                + " bolt=" + host + ":" + port
                + " tls=" + (tlsDir != null && !tlsDir.isEmpty() ? "optional" : "off"));
        System.out.flush();
        stopped.await();
    }

    /**
     * Idempotent: the first start replaces the default password (and its
     * "change required" flag); later starts get "same password" and ignore it.
     * Embedded queries on the system database run without auth, as admin.
     */
    private static void setPassword(DatabaseManagementService dbms, String password) {
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $pw CHANGE NOT REQUIRED", Map.of("pw", password));
            System.out.println("NEO4J password for user neo4j set");
        } catch (RuntimeException e) {
            String msg = String.valueOf(e.getMessage()).toLowerCase();
            if (msg.contains("same")) {
                System.out.println("NEO4J password for user neo4j already set");
            } else {
                throw e;
            }
        }
    }

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    private static long parseSize(String s) {
        s = s.trim().toLowerCase();
        char unit = s.charAt(s.length() - 1);
        if (Character.isDigit(unit)) return Long.parseLong(s);
        long n = Long.parseLong(s.substring(0, s.length() - 1));
        switch (unit) {
            case 'k': return ByteUnit.kibiBytes(n);
            case 'm': return ByteUnit.mebiBytes(n);
            case 'g': return ByteUnit.gibiBytes(n);
            default: throw new IllegalArgumentException("bad size: " + s);
        }
    }
}
