//! Typed errors of the connection pool.

/// What went wrong with a database call. Messages are the database's own.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The connection could not be opened (server down, bad file, bad
    /// connection string, `on_open` hook failed).
    #[error("could not open a database connection: {message}")]
    Open {
        /// The database's or the OS's message.
        message: String,
    },
    /// The connection broke during the call (e.g. the server restarted). It
    /// has been dropped; the next call opens a new one.
    #[error("the database connection was lost: {message}")]
    ConnectionLost {
        /// The driver's message.
        message: String,
    },
    /// A constraint (unique, foreign key, not null, check) was violated.
    #[error("constraint violation: {message}")]
    Constraint {
        /// SQLSTATE (PostgreSQL) or SQLite's extended result code name.
        code: Option<String>,
        /// The database's message.
        message: String,
    },
    /// The database rejected the statement (syntax error, unknown table, …).
    #[error("SQL error: {message}")]
    Sql {
        /// SQLSTATE (PostgreSQL) or SQLite's result code name.
        code: Option<String>,
        /// The database's message.
        message: String,
    },
    /// A parameter could not be bound (wrong count, or a value that does not
    /// fit the column's type).
    #[error("bad query parameter: {message}")]
    Param {
        /// What did not fit.
        message: String,
    },
    /// A result column has a type this crate does not map to [`crate::Value`]
    /// (cast it in SQL, e.g. `col::text`).
    #[error("column {column} has unsupported type {type_name}")]
    UnsupportedType {
        /// The column's name.
        column: String,
        /// The database's name for the type.
        type_name: String,
    },
    /// Reading a row failed.
    #[error(transparent)]
    Row(#[from] RowError),
}

/// Typed access to a [`crate::Row`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// No column has that name.
    #[error("no column named {0:?}")]
    NoSuchColumn(String),
    /// The index is past the last column.
    #[error("column index {index} out of range (row has {len} columns)")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of columns.
        len: usize,
    },
    /// The value does not convert to the requested type.
    #[error("column {column:?} holds {found}, which does not convert to {expected}")]
    TypeMismatch {
        /// The column's name.
        column: String,
        /// The requested Rust type.
        expected: &'static str,
        /// What the column holds (`NULL`, `INTEGER`, `REAL`, `TEXT`, `BLOB`, `BOOL`).
        found: &'static str,
    },
}
