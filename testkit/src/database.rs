//! A PostgreSQL database of a test's own (127.0.0.1:5432, trust auth as
//! the machine's `postgres` user): created empty, dropped (with any
//! connection still open to it) when the test ends, pass or fail.

use postgres::{Client, NoTls};

/// The maintenance database, for creating and dropping test databases.
pub const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// A database named after a test's namespace.
pub struct TestDatabase {
    /// Its name (lower case letters, digits and `_`).
    pub name: String,
}

impl TestDatabase {
    /// An empty database named after `namespace`.
    pub fn new(namespace: &str) -> TestDatabase {
        let name = format!("cf_{}", namespace.replace(['-', '.'], "_")).to_lowercase();
        let mut admin = Client::connect(ADMIN, NoTls).expect("PostgreSQL on 127.0.0.1:5432");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create the test database");
        TestDatabase { name }
    }

    /// Its libpq-style connection string.
    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }

    /// A new connection to it.
    pub fn client(&self) -> Client {
        Client::connect(&self.connection(), NoTls).expect("connect to the test database")
    }

    /// Applies the schema (as `--apply-schema` does). No day partitions:
    /// rows land in DEFAULT until a test creates them.
    pub fn with_schema(self) -> TestDatabase {
        let mut client = self.client();
        chatflow_database::schema::apply_schema(&mut client).expect("schema applies");
        self
    }

    /// The single `bigint` a query answers.
    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .expect("count query")
            .get(0)
    }

    /// Rows in `messages`.
    pub fn rows(&self) -> i64 {
        self.count("SELECT count(*) FROM messages")
    }

    /// Message ids stored, as text.
    pub fn ids(&self) -> Vec<String> {
        self.client()
            .query("SELECT message_id::text FROM messages", &[])
            .expect("ids")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(ADMIN, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}
