"""For development and demos, not the product: a synthetic DESI-like release, the
embedded SeaweedFS S3 server, and a relay that models stores differing from AWS."""
