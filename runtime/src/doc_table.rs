//! Reading a Markdown table out of the docs, for the tests that hold a
//! table in docs/ to the code it describes.

/// The body rows of the first table whose header line starts with
/// `header`, each as its trimmed cells (backticks dropped).
pub(crate) fn rows(doc: &str, header: &str) -> Vec<Vec<String>> {
    doc.lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}
