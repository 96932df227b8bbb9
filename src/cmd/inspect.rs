//! `nmt inspect`: pictures of the model's parts that need no trained model.

use super::save_picture;
use crate::cli::{InspectArgs, InspectCommand, PositionalEncodingArgs};
use crate::viz::{positional_encoding, Format};
use anyhow::Result;

pub fn run(args: InspectArgs) -> Result<()> {
    match args.what {
        InspectCommand::PositionalEncoding(a) => positional_encoding(a),
    }
}

fn positional_encoding(args: PositionalEncodingArgs) -> Result<()> {
    let heatmap = positional_encoding::heatmap(args.positions, args.d_model, args.layout)?;
    save_picture(&heatmap, Format::resolve(args.picture.format, &args.output), &args.output)
}
