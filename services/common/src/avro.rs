//! The Avro codec: schemas from `schemas/*.avsc`, encoding and decoding of every record.
//!
//! The schema files are the public contract with clients. They are compiled in from those
//! files (`include_str!`), never restated by hand; the shared `parm.v1.Tensor` type lives
//! in its own file (named as fastavro and the Java tools expect) and is spliced into each
//! schema that references it, so every parsed schema is self-contained. Values are plain
//! Avro binary datums without a header; trace context travels in Kafka headers.

use anyhow::{anyhow, Context};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::LazyLock;

/// The schema files, by file name, as shipped in `schemas/`.
pub const SCHEMA_FILES: &[(&str, &str)] = &[
    ("parm.v1.Tensor.avsc", include_str!("../../../schemas/parm.v1.Tensor.avsc")),
    ("query.avsc", include_str!("../../../schemas/query.avsc")),
    ("member-query.avsc", include_str!("../../../schemas/member-query.avsc")),
    ("parity-query.avsc", include_str!("../../../schemas/parity-query.avsc")),
    ("group-manifest.avsc", include_str!("../../../schemas/group-manifest.avsc")),
    ("prediction.avsc", include_str!("../../../schemas/prediction.avsc")),
    ("parity-prediction.avsc", include_str!("../../../schemas/parity-prediction.avsc")),
    ("result.avsc", include_str!("../../../schemas/result.avsc")),
    ("dead-letter.avsc", include_str!("../../../schemas/dead-letter.avsc")),
    ("worker-health.avsc", include_str!("../../../schemas/worker-health.avsc")),
];

/// A record type with its schema file.
pub trait AvroRecord: Serialize + DeserializeOwned {
    /// The file in `schemas/` that defines this record.
    const SCHEMA_FILE: &'static str;
}

/// Parses a schema file, splicing in named types it references from other files.
pub fn parse_schema(file: &str) -> anyhow::Result<Schema> {
    let text = schema_text(file)?;
    let mut json: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("schemas/{file} is not valid JSON"))?;
    let tensor: serde_json::Value = serde_json::from_str(schema_text("parm.v1.Tensor.avsc")?)?;
    let mut spliced = false;
    splice(&mut json, "parm.v1.Tensor", &tensor, &mut spliced);
    Schema::parse(&json).with_context(|| format!("schemas/{file} is not a valid Avro schema"))
}

fn schema_text(file: &str) -> anyhow::Result<&'static str> {
    SCHEMA_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| *text)
        .ok_or_else(|| anyhow!("no schema file named {file}"))
}

/// Replaces the first use of the named type by its definition (Avro allows one definition
/// per name; later uses stay references).
fn splice(node: &mut serde_json::Value, name: &str, definition: &serde_json::Value, done: &mut bool) {
    match node {
        serde_json::Value::String(s) if s == name && !*done => {
            *node = definition.clone();
            *done = true;
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| splice(i, name, definition, done)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| splice(v, name, definition, done)),
        _ => {}
    }
}

/// A built-in schema with its writer and reader, made once per record type.
struct Codec {
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

fn codec(file: &'static str) -> Codec {
    let schema: &'static Schema =
        Box::leak(Box::new(parse_schema(file).unwrap_or_else(|e| panic!("built-in schema {file}: {e:#}"))));
    Codec {
        schema,
        writer: GenericDatumWriter::builder(schema).build().expect("writer for a parsed schema"),
        reader: GenericDatumReader::builder(schema).build().expect("reader for a parsed schema"),
    }
}

macro_rules! codecs {
    ($($file:literal),*) => {
        static CODECS: LazyLock<Vec<(&'static str, Codec)>> = LazyLock::new(|| vec![$(($file, codec($file))),*]);
    };
}
codecs!(
    "query.avsc",
    "member-query.avsc",
    "parity-query.avsc",
    "group-manifest.avsc",
    "prediction.avsc",
    "parity-prediction.avsc",
    "result.avsc",
    "dead-letter.avsc",
    "worker-health.avsc"
);

fn codec_for(file: &str) -> &'static Codec {
    &CODECS.iter().find(|(f, _)| *f == file).unwrap_or_else(|| panic!("no codec for {file}")).1
}

/// The parsed schema of a record type.
pub fn schema_of<T: AvroRecord>() -> &'static Schema {
    codec_for(T::SCHEMA_FILE).schema
}

/// Encodes a record as an Avro binary datum.
pub fn encode<T: AvroRecord>(record: &T) -> anyhow::Result<Vec<u8>> {
    codec_for(T::SCHEMA_FILE)
        .writer
        .write_ser_to_vec(record)
        .with_context(|| format!("encoding a record with schemas/{}", T::SCHEMA_FILE))
}

/// Decodes an Avro binary datum; fails on bytes left over (a sign of the wrong schema).
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> anyhow::Result<T> {
    let mut cursor = std::io::Cursor::new(bytes);
    let record = codec_for(T::SCHEMA_FILE)
        .reader
        .read_deser::<T>(&mut cursor)
        .map_err(|e| anyhow!("not a valid record of schemas/{}: {e}", T::SCHEMA_FILE))?;
    let rest = bytes.len().saturating_sub(usize::try_from(cursor.position()).unwrap_or(usize::MAX));
    if rest != 0 {
        return Err(anyhow!(
            "not a record of schemas/{}: {rest} bytes left over after decoding (wrong schema?)",
            T::SCHEMA_FILE
        ));
    }
    Ok(record)
}
