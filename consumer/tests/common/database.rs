//! A PostgreSQL database of a test's own (127.0.0.1:5432, trust auth as
//! the machine's `postgres` user): created empty, dropped when the test ends.

use postgres::{Client, NoTls};

pub const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// An empty database named after the test's namespace.
    pub fn new(namespace: &str) -> TestDatabase {
        let name = format!("cf_{}", namespace.replace(['-', '.'], "_")).to_lowercase();
        let mut admin = Client::connect(ADMIN, NoTls).expect("PostgreSQL on 127.0.0.1:5432");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create the test database");
        TestDatabase { name }
    }

    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.connection(), NoTls).expect("connect to the test database")
    }

    /// Applies the schema (as `--apply-schema` does).
    pub fn with_schema(self) -> TestDatabase {
        let mut client = self.client();
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning; {}",
                chatflow_consumer::partitions::SCHEMA
            ))
            .expect("schema applies");
        self
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .expect("count query")
            .get(0)
    }

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
