//! The parallel corpus, the joint BPE vocabulary, and batches by token count.

pub mod batch;
pub mod corpus;
pub mod tokenizer;
