//! One database connection (SQLite or PostgreSQL), used on a pool thread.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::error::DbError;
use crate::value::{Row, Value};

/// Where connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An SQLite database file (created when missing).
    SqliteFile(std::path::PathBuf),
    /// A private in-memory SQLite database. SQLite in-memory databases belong
    /// to one connection, so such a pool always has exactly one connection
    /// (and one thread).
    SqliteMemory,
    /// A PostgreSQL server, as a libpq-style string
    /// (`host=127.0.0.1 port=5432 user=app dbname=app`) or a `postgresql://` URL.
    Postgres(String),
}

/// How long a PostgreSQL connect may take when the string does not say.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits for another connection's lock before `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// A database connection owned by one pool thread. Handed to
/// [`crate::ConnectionPool::run_with_connection`] and the `on_open` hook.
pub struct Connection {
    backend: Backend,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Connection")
            .field("backend", &kind)
            .finish()
    }
}

impl Connection {
    pub(crate) fn open(target: &Target) -> Result<Connection, DbError> {
        let open_err = |message: String| DbError::Open { message };
        let backend = match target {
            Target::SqliteFile(path) => {
                let c = rusqlite::Connection::open(path).map_err(|e| open_err(e.to_string()))?;
                Self::prepare_sqlite(&c)?;
                Backend::Sqlite(c)
            }
            Target::SqliteMemory => {
                let c =
                    rusqlite::Connection::open_in_memory().map_err(|e| open_err(e.to_string()))?;
                Self::prepare_sqlite(&c)?;
                Backend::Sqlite(c)
            }
            Target::Postgres(s) => {
                let mut config =
                    postgres::Config::from_str(s).map_err(|e| open_err(e.to_string()))?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(PG_CONNECT_TIMEOUT);
                }
                let client = config
                    .connect(postgres::NoTls)
                    .map_err(|e| open_err(pg_message(&e)))?;
                Backend::Postgres(Box::new(client))
            }
        };
        Ok(Connection { backend })
    }

    fn prepare_sqlite(c: &rusqlite::Connection) -> Result<(), DbError> {
        c.busy_timeout(SQLITE_BUSY_TIMEOUT)
            .map_err(|e| DbError::Open {
                message: e.to_string(),
            })?;
        // SQLite opens anything lazily; reading the schema is what tells a
        // database from a file that is not one.
        c.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .map_err(|e| DbError::Open {
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match &mut self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(sqlite_error)?;
                check_param_count(stmt.parameter_count(), params.len())?;
                stmt.execute(rusqlite::params_from_iter(params.iter()))
                    .map(|n| n as u64)
                    .map_err(sqlite_error)
            }
            Backend::Postgres(c) => {
                let refs = pg_params(params);
                c.execute(sql, &refs).map_err(|e| pg_error(c, &e))
            }
        }
    }

    /// Runs a query and collects its rows.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match &mut self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(sqlite_error)?;
                check_param_count(stmt.parameter_count(), params.len())?;
                let columns: Arc<[String]> = stmt
                    .column_names()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .into();
                let n = columns.len();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter()))
                    .map_err(sqlite_error)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(sqlite_error)? {
                    let mut values = Vec::with_capacity(n);
                    for i in 0..n {
                        let v = r.get_ref(i).map_err(sqlite_error)?;
                        values.push(match v {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(i) => Value::Integer(i),
                            ValueRef::Real(f) => Value::Real(f),
                            ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        });
                    }
                    out.push(Row::new(columns.clone(), values));
                }
                Ok(out)
            }
            Backend::Postgres(c) => {
                let refs = pg_params(params);
                let rows = c.query(sql, &refs).map_err(|e| pg_error(c, &e))?;
                let Some(first) = rows.first() else {
                    return Ok(Vec::new());
                };
                let columns: Arc<[String]> = first
                    .columns()
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>()
                    .into();
                rows.iter()
                    .map(|r| pg_row(r, &columns))
                    .collect::<Result<Vec<_>, _>>()
            }
        }
    }

    /// Runs several statements separated by `;` without parameters
    /// (schema set-up, PRAGMAs).
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.backend {
            Backend::Sqlite(c) => c.execute_batch(sql).map_err(sqlite_error),
            Backend::Postgres(c) => c.batch_execute(sql).map_err(|e| pg_error(c, &e)),
        }
    }

    /// The SQLite connection, for what this API does not cover.
    pub fn as_sqlite(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.backend {
            Backend::Sqlite(c) => Some(c),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL client, for what this API does not cover.
    pub fn as_postgres(&mut self) -> Option<&mut postgres::Client> {
        match &mut self.backend {
            Backend::Postgres(c) => Some(&mut **c),
            Backend::Sqlite(_) => None,
        }
    }

    /// True when the connection can no longer be used (the server went away).
    pub fn is_broken(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(c) => c.is_closed(),
        }
    }

    pub(crate) fn begin(&mut self) -> Result<(), DbError> {
        match &self.backend {
            // IMMEDIATE takes the write lock up front, so concurrent
            // transactions wait in the busy handler instead of failing with
            // SQLITE_BUSY when a reader later wants to write.
            Backend::Sqlite(_) => self.batch_execute("BEGIN IMMEDIATE"),
            Backend::Postgres(_) => self.batch_execute("BEGIN"),
        }
    }

    pub(crate) fn commit(&mut self) -> Result<(), DbError> {
        self.batch_execute("COMMIT")
    }

    /// Fails when PostgreSQL has aborted the current transaction (SQLSTATE
    /// 25P02), in which case `COMMIT` would roll back without an error.
    pub(crate) fn check_not_aborted(&mut self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(_) => self.batch_execute("SELECT 1"),
        }
    }

    pub(crate) fn rollback(&mut self) -> Result<(), DbError> {
        self.batch_execute("ROLLBACK")
    }

    /// Closes the connection, telling a server goodbye.
    pub(crate) fn close(self) {
        match self.backend {
            Backend::Sqlite(c) => {
                if let Err((_, e)) = c.close() {
                    tracing::warn!(error = %e, "closing an SQLite connection failed");
                }
            }
            Backend::Postgres(c) => {
                if let Err(e) = (*c).close() {
                    tracing::debug!(error = %e, "closing a PostgreSQL connection failed");
                }
            }
        }
    }
}

/// The connection inside [`crate::ConnectionPool::run_interaction`]: the
/// transaction commits when the closure returns `Ok`, rolls back otherwise.
pub struct Transaction<'a> {
    pub(crate) conn: &'a mut Connection,
    /// A statement failed (or the raw connection was handed out): PostgreSQL
    /// may have aborted the transaction, and its `COMMIT` would then quietly
    /// roll back, so the pool checks before reporting success.
    pub(crate) suspect: bool,
}

impl Transaction<'_> {
    fn note<T>(&mut self, r: Result<T, DbError>) -> Result<T, DbError> {
        if r.is_err() {
            self.suspect = true;
        }
        r
    }
    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let r = self.conn.execute(sql, params);
        self.note(r)
    }
    /// Runs a query and collects its rows.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let r = self.conn.query(sql, params);
        self.note(r)
    }
    /// Runs a query expected to return exactly one row.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, DbError> {
        let mut rows = self.query(sql, params)?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(DbError::Sql {
                code: None,
                message: format!("query_one: the query returned {n} rows"),
            }),
        }
    }
    /// The underlying connection.
    pub fn connection(&mut self) -> &mut Connection {
        self.suspect = true;
        self.conn
    }
}

fn check_param_count(expected: usize, got: usize) -> Result<(), DbError> {
    if expected == got {
        Ok(())
    } else {
        Err(DbError::Param {
            message: format!("the statement takes {expected} parameters, {got} given"),
        })
    }
}

// ---- SQLite ----

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

fn sqlite_error(e: rusqlite::Error) -> DbError {
    use rusqlite::ffi::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let message = msg.clone().unwrap_or_else(|| e.to_string());
            let code = Some(format!("{:?}", f.code));
            match f.code {
                ErrorCode::ConstraintViolation => DbError::Constraint { code, message },
                ErrorCode::NotADatabase | ErrorCode::CannotOpen => DbError::Open { message },
                _ => DbError::Sql { code, message },
            }
        }
        rusqlite::Error::InvalidParameterCount(..) | rusqlite::Error::ToSqlConversionFailure(_) => {
            DbError::Param {
                message: e.to_string(),
            }
        }
        _ => DbError::Sql {
            code: None,
            message: e.to_string(),
        },
    }
}

// ---- PostgreSQL ----

/// A [`Value`] that does not fit the PostgreSQL type of its parameter.
#[derive(Debug, thiserror::Error)]
#[error("a {value} value cannot be sent as PostgreSQL type {pg_type}")]
struct ParamTypeError {
    value: &'static str,
    pg_type: String,
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            Box::new(ParamTypeError {
                value: self.kind(),
                pg_type: ty.name().to_string(),
            })
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::OID => u32::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Text(s) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            Value::Text(s) if crate::pgtypes::handles(ty) => {
                crate::pgtypes::encode(ty, s, out)?;
                Ok(IsNull::No)
            }
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // Checked per value in `to_sql`, with an error that names both sides.
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => with_sources(e),
    }
}

/// The error and its causes: the driver's top-level text alone ("error
/// connecting to server") hides the useful part ("Connection refused").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn pg_error(client: &postgres::Client, e: &postgres::Error) -> DbError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<ParamTypeError>()
            || s.is::<std::num::TryFromIntError>()
            || s.is::<crate::pgtypes::TextValueError>()
        {
            return DbError::Param {
                message: with_sources(e),
            };
        }
        source = s.source();
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_string();
        let message = db.message().to_string();
        // Class 08: connection exception; 57P01..03: the server is shutting down.
        if code.starts_with("08") || matches!(code.as_str(), "57P01" | "57P02" | "57P03") {
            return DbError::ConnectionLost { message };
        }
        if code.starts_with("23") {
            return DbError::Constraint {
                code: Some(code),
                message,
            };
        }
        return DbError::Sql {
            code: Some(code),
            message,
        };
    }
    if e.is_closed() || client.is_closed() {
        return DbError::ConnectionLost {
            message: with_sources(e),
        };
    }
    DbError::Sql {
        code: None,
        message: with_sources(e),
    }
}

fn pg_row(r: &postgres::Row, columns: &Arc<[String]>) -> Result<Row, DbError> {
    let mut values = Vec::with_capacity(columns.len());
    for (i, col) in r.columns().iter().enumerate() {
        let err = |e: postgres::Error| DbError::Sql {
            code: None,
            message: e.to_string(),
        };
        let v = match *col.type_() {
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map_err(err)?.into(),
            Type::INT2 => r.try_get::<_, Option<i16>>(i).map_err(err)?.into(),
            Type::INT4 => r.try_get::<_, Option<i32>>(i).map_err(err)?.into(),
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(err)?.into(),
            Type::OID => r.try_get::<_, Option<u32>>(i).map_err(err)?.into(),
            Type::FLOAT4 => r.try_get::<_, Option<f32>>(i).map_err(err)?.into(),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map_err(err)?.into(),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i).map_err(err)?.into(),
            ref t if <String as postgres::types::FromSql>::accepts(t) => {
                r.try_get::<_, Option<String>>(i).map_err(err)?.into()
            }
            ref t if crate::pgtypes::handles(t) => r
                .try_get::<_, Option<crate::pgtypes::PgText>>(i)
                .map_err(err)?
                .map(|t| t.0)
                .into(),
            ref t => {
                return Err(DbError::UnsupportedType {
                    column: col.name().to_string(),
                    type_name: t.name().to_string(),
                })
            }
        };
        values.push(v);
    }
    Ok(Row::new(columns.clone(), values))
}
