//! Values bound as parameters and read from rows.

use std::sync::Arc;

use crate::error::RowError;

/// A database value: what parameters are bound as and what rows hold.
///
/// PostgreSQL's `uuid`, `json`, `jsonb`, `numeric`, `date`, `time`,
/// `timestamp` and `timestamptz` travel as [`Value::Text`] in both
/// directions (see the crate README for the formats).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (bound to PostgreSQL `int2/int4/int8` with a range check).
    Integer(i64),
    /// A double (PostgreSQL `float4/float8`).
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (PostgreSQL `bytea`).
    Blob(Vec<u8>),
    /// A boolean (SQLite stores it as 0/1).
    Bool(bool),
}

impl Value {
    /// The kind's SQL-ish name, used in errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
            Value::Bool(_) => "BOOL",
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Integer(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Real(f64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a `Vec<Value>` of query parameters.
///
/// ```
/// use torsion_db::{params, Value};
/// let p = params![1, "two", 3.0, None::<i64>];
/// assert_eq!(p[1], Value::Text("two".into()));
/// assert_eq!(p[3], Value::Null);
/// ```
#[macro_export]
macro_rules! params {
    () => { ::std::vec::Vec::<$crate::Value>::new() };
    ($($v:expr),+ $(,)?) => { ::std::vec![$($crate::Value::from($v)),+] };
}

/// Conversion from a [`Value`] for [`Row::get`].
pub trait FromValue: Sized {
    /// `None` when the value does not convert.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for Value {
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}
impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for i32 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => i32::try_from(*i).ok(),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => u32::try_from(*i).ok(),
            _ => None,
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Integer(0) => Some(false),
            Value::Integer(1) => Some(true),
            _ => None,
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Selects a column by position or by name.
pub trait RowIndex {
    /// The column's position in `row`.
    fn position(&self, row: &Row) -> Result<usize, RowError>;
}

impl RowIndex for usize {
    fn position(&self, row: &Row) -> Result<usize, RowError> {
        if *self < row.values.len() {
            Ok(*self)
        } else {
            Err(RowError::IndexOutOfRange {
                index: *self,
                len: row.values.len(),
            })
        }
    }
}

impl RowIndex for &str {
    fn position(&self, row: &Row) -> Result<usize, RowError> {
        row.columns
            .iter()
            .position(|c| c == self)
            .ok_or_else(|| RowError::NoSuchColumn(self.to_string()))
    }
}

/// One result row: values with their column names.
///
/// ```
/// use torsion_db::{Row, RowError, Value};
/// let row = Row::new(vec!["id".into(), "name".into()].into(), vec![Value::Integer(7), Value::Null]);
/// assert_eq!(row.get::<i64, _>("id").unwrap(), 7);
/// assert_eq!(row.get::<Option<String>, _>(1).unwrap(), None);
/// assert!(matches!(row.get::<String, _>("id"), Err(RowError::TypeMismatch { .. })));
/// assert!(matches!(row.get::<i64, _>("nope"), Err(RowError::NoSuchColumn(_))));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// A row from column names and values (same length).
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Row {
        Row { columns, values }
    }

    /// The value at `idx` (a position or a column name) as `T`.
    pub fn get<T: FromValue, I: RowIndex>(&self, idx: I) -> Result<T, RowError> {
        let i = idx.position(self)?;
        let v = &self.values[i];
        T::from_value(v).ok_or_else(|| RowError::TypeMismatch {
            column: self.columns.get(i).cloned().unwrap_or_default(),
            expected: std::any::type_name::<T>(),
            found: v.kind(),
        })
    }

    /// The raw value at `idx`.
    pub fn value<I: RowIndex>(&self, idx: I) -> Result<&Value, RowError> {
        let i = idx.position(self)?;
        Ok(&self.values[i])
    }

    /// Column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a row without columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}
