"""The checkpoint store's read side, shared by the trainer and the CLI: where the bytes
live (storage.py: a local directory or S3, boto3 only for s3://), what a committed
checkpoint is (manifest.py: signed manifest written last, good markers), and what a
store holds (listing.py: every checkpoint directory, read and authenticated).

Writing, terms, lineage and rotation are the trainer's (kubetrain_trainer.checkpoint).
"""
