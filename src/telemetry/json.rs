//! The JSON line format: what tracing-subscriber's `.json().flatten_event(true)
//! .with_span_list(false)` writes, key for key, written straight into the line.
//!
//! tracing-subscriber's JSON formatter parses the current span's fields back from their JSON text
//! into a map for every event, and builds each field's value before serializing it: about 4 µs
//! for a review's event, half of a PVC's whole review. This one writes each field as the event
//! records it, and copies the span's fields, already JSON (tracing-subscriber's `JsonFields`
//! keeps them), as they are: under 2 µs, span included (`cargo bench --bench admission --
//! "log event"` runs both).
//!
//! A line is `{"timestamp":..,"level":..,` then the event's fields in their order (the message
//! first), then `"target":..` and, inside a span, `"span":{<its fields>,"name":..}`. Values are
//! as tracing-subscriber writes them: strings, integers and booleans as JSON, a float as a number
//! (`null` when not finite), anything else as the string of its `Debug`.
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format, with [`JsonFields`] for the spans' fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        if let Some(span) = ctx.parent_span() {
            w.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            // `{}` or `{"key":value,...}`, as JsonFields wrote them when the span was made.
            let inner = extensions
                .get::<FormattedFields<JsonFields>>()
                .and_then(|f| f.fields.strip_prefix('{')?.strip_suffix('}'))
                .unwrap_or_default();
            if !inner.is_empty() {
                w.write_str(inner)?;
                w.write_char(',')?;
            }
            w.write_str("\"name\":")?;
            string(&mut w, span.name())?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// Writes each field of an event as `,"name":value`; the first error stops it.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            self.w.write_char(',')?;
            string(self.w, name)?;
            self.w.write_char(':')?;
            value(self.w)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| string(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.put(field, |w| write!(w, "{value}"));
        } else {
            self.put(field, |w| w.write_str("null"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn string(w: &mut impl Write, text: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(text)?;
    w.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string.
struct Escaped<'a, W>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        // Most text needs no escape: each run up to the next byte that does is written whole.
        while let Some(i) = rest
            .bytes()
            .position(|b| b < 0x20 || b == b'"' || b == b'\\')
        {
            self.0.write_str(&rest[..i])?;
            match rest.as_bytes()[i] {
                b'"' => self.0.write_str("\\\""),
                b'\\' => self.0.write_str("\\\\"),
                b'\n' => self.0.write_str("\\n"),
                b'\r' => self.0.write_str("\\r"),
                b'\t' => self.0.write_str("\\t"),
                control => write!(self.0, "\\u{control:04x}"),
            }?;
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// The lines that `emit` logs, through a layer with `format`.
    fn lines(ours: bool, emit: impl Fn()) -> Vec<String> {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer().with_writer(buffer.clone());
        let subscriber = tracing_subscriber::registry();
        if ours {
            let layer = layer.fmt_fields(JsonFields::new()).event_format(JsonLines);
            tracing::subscriber::with_default(subscriber.with(layer), &emit);
        } else {
            let layer = layer.json().flatten_event(true).with_span_list(false);
            tracing::subscriber::with_default(subscriber.with(layer), &emit);
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// The line without its timestamp (the two formatters' clocks differ).
    fn untimed(line: &str) -> String {
        let rest = line.split_once("\",\"level\"").unwrap().1;
        format!("{{\"timestamp\":\"T\",\"level\"{rest}")
    }

    fn every_kind_of_field() {
        let span = tracing::info_span!("review", endpoint = "mutate", n = 3);
        let _entered = span.enter();
        let messages = vec!["a \"quoted\"\nline\twith \\ and \u{1}".to_owned()];
        tracing::info!(
            uid = "17692271-d8b9",
            skipped = None::<&str>,
            count = 7u64,
            delta = -2i64,
            ok = true,
            ratio = 0.5f64,
            nan = f64::NAN,
            big = 1u128 << 100,
            r#type = "raw",
            control = "a\u{1}b\u{1f}c",
            messages = ?messages,
            error = %std::io::Error::other("disk \"full\""),
            "admission review"
        );
        tracing::warn!(name = "ünïcødé ✓", "no fields in the span");
        drop(_entered);
        tracing::error!("outside any span: {}", 42);
        let empty = tracing::info_span!("bare");
        empty.in_scope(|| tracing::info!("in a span without fields"));
    }

    #[test]
    fn writes_what_tracing_subscribers_json_writes() {
        let ours = lines(true, every_kind_of_field);
        let theirs = lines(false, every_kind_of_field);
        assert_eq!(ours.len(), 4, "{ours:#?}");
        for (ours, theirs) in ours.iter().zip(&theirs) {
            // The same text, key for key, and valid JSON.
            assert_eq!(untimed(ours), untimed(theirs));
            let _: serde_json::Value = serde_json::from_str(ours).unwrap();
        }
        assert!(ours[0].contains(r#""nan":null"#), "{}", ours[0]);
        assert!(ours[0].ends_with(r#""span":{"endpoint":"mutate","n":3,"name":"review"}}"#));
        assert!(!ours[2].contains("\"span\""), "{}", ours[2]);
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        let line = &lines(true, || tracing::info!("x"))[0];
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-12-02T05:57:09.040927Z".len(),
            "{ts}"
        );
    }
}
