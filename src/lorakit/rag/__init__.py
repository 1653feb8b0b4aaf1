"""RAG: documents → article chunks (ingest) → BM25 / dense / hybrid index → answers with citations (answer),
measured against fine-tuning on one test set (compare)."""
