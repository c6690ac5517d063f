"""The storage layer: talking to S3. The client and its errors, bucket listings and
object lookups, key layout, throttling and store health, and the transfer backends behind
one contract (:mod:`desimirror.storage.transfer`)."""
