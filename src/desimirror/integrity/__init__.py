"""Integrity: what the bytes must be and how that is known. Checksums, the release's
published ``*.sha256sum`` listings, hashing ahead of a sender, and reading the source tree
(nothing outside the root, every file checked against the crawl)."""
