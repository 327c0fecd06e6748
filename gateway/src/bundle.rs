//! Writing Bundles as JSON text. Stored resources are spliced in as they are (they are
//! already compact JSON), so serving a page of results parses nothing.

use serde_json::Value;

/// Builds a Bundle of one `type` incrementally.
#[derive(Debug)]
pub struct BundleWriter {
    head: String,
    links: Vec<String>,
    entries: Vec<String>,
}

fn quoted(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

impl BundleWriter {
    pub fn new(bundle_type: &str) -> BundleWriter {
        let id = uuid::Uuid::new_v4();
        let now = crate::model::Instant::now().to_fhir();
        BundleWriter {
            head: format!(
                r#"{{"resourceType":"Bundle","id":"{id}","meta":{{"lastUpdated":"{now}"}},"type":{}"#,
                quoted(bundle_type)
            ),
            links: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub fn total(&mut self, total: i64) {
        self.head.push_str(&format!(r#","total":{total}"#));
    }

    pub fn link(&mut self, relation: &str, url: &str) {
        self.links.push(format!(
            r#"{{"relation":{},"url":{}}}"#,
            quoted(relation),
            quoted(url)
        ));
    }

    /// An entry holding a stored resource (JSON text), with an optional `search.mode`.
    pub fn entry(&mut self, full_url: &str, resource: &str, search_mode: Option<&str>) {
        let mut entry = format!(r#"{{"fullUrl":{},"resource":{resource}"#, quoted(full_url));
        if let Some(mode) = search_mode {
            entry.push_str(&format!(r#","search":{{"mode":{}}}"#, quoted(mode)));
        }
        entry.push('}');
        self.entries.push(entry);
    }

    /// An entry holding a JSON resource built here.
    pub fn entry_json(
        &mut self,
        full_url: Option<&str>,
        resource: &Value,
        search_mode: Option<&str>,
    ) {
        let mut entry = String::from("{");
        if let Some(url) = full_url {
            entry.push_str(&format!(r#""fullUrl":{},"#, quoted(url)));
        }
        entry.push_str(&format!(r#""resource":{resource}"#));
        if let Some(mode) = search_mode {
            entry.push_str(&format!(r#","search":{{"mode":{}}}"#, quoted(mode)));
        }
        entry.push('}');
        self.entries.push(entry);
    }

    /// An entry with any members: `members` is a JSON object whose members are written
    /// after the optional resource (`request`, `response`, ...).
    pub fn entry_with(&mut self, full_url: Option<&str>, resource: Option<&str>, members: &Value) {
        let mut parts = Vec::new();
        if let Some(url) = full_url {
            parts.push(format!(r#""fullUrl":{}"#, quoted(url)));
        }
        if let Some(resource) = resource {
            parts.push(format!(r#""resource":{resource}"#));
        }
        if let Value::Object(map) = members {
            for (key, value) in map {
                parts.push(format!("{}:{value}", quoted(key)));
            }
        }
        self.entries.push(format!("{{{}}}", parts.join(",")));
    }

    pub fn finish(mut self) -> String {
        if !self.links.is_empty() {
            self.head
                .push_str(&format!(r#","link":[{}]"#, self.links.join(",")));
        }
        if !self.entries.is_empty() {
            self.head
                .push_str(&format!(r#","entry":[{}]"#, self.entries.join(",")));
        }
        self.head.push('}');
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json_with_resources_spliced_in() {
        let mut bundle = BundleWriter::new("searchset");
        bundle.total(1);
        bundle.link("self", "http://x/fhir/Patient?name=a\"b");
        bundle.entry(
            "http://x/fhir/Patient/1",
            r#"{"resourceType":"Patient","id":"1","x":1.50}"#,
            Some("match"),
        );
        let text = bundle.finish();
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["total"], 1);
        assert_eq!(value["entry"][0]["search"]["mode"], "match");
        assert!(text.contains("1.50"), "resource text is kept as stored");
    }
}
