//! The text rendering of an [`Explanation`]: five numbered sections in the paper's order, with small
//! tables. It prints only what the struct holds (`--json` prints the same struct).

use super::encoder::{Residual, Sublayers};
use super::Explanation;
use crate::config::Norm;
use std::fmt::Write;

/// The whole walk-through as text, ending with a newline.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let m = &e.model;
    let norm = match m.norm {
        Norm::Post => "post-norm, as in the paper",
        Norm::Pre => "pre-norm (a deviation from the paper)",
    };
    let _ = writeln!(out, "Sentence: {}", e.sentence);
    let _ = writeln!(
        out,
        "Model: {} encoder and {} decoder layers, d_model = {}, h = {} heads of d_k = {}, d_ff = {}, a \
         vocabulary of {} pieces, {norm}.\n",
        m.encoder_layers, m.decoder_layers, m.d_model, m.heads, m.d_k, m.d_ff, m.vocab_size
    );
    pieces(&mut out, e);
    self_attention(&mut out, e);
    multi_head(&mut out, e);
    sublayers(&mut out, e);
    decoding(&mut out, e);
    out
}

fn pieces(out: &mut String, e: &Explanation) {
    let b = &e.embedding;
    let _ = writeln!(out, "1. Pieces and embeddings (§3.4, §3.5)");
    let _ = writeln!(
        out,
        "   The encoder reads {} BPE pieces (the sentence's, then </s>). Each id picks a row of the embedding \
         matrix ({} × {}),\n   multiplied by √d_model = {:.2}; the positional encoding PE(position) is added: \
         X = embedding × √d_model + PE, ({} × {}).\n   \
         (‖PE‖ is √(d_model / 2) at every position: each sine and cosine pair has length 1.)\n",
        e.pieces.len(),
        b.table_shape[0],
        b.table_shape[1],
        b.scale,
        b.input_shape[0],
        b.input_shape[1]
    );
    let _ = writeln!(
        out,
        "   {:>5}  {:<14} {:>6}  {:>12}  {:>6}  {:>6}",
        "index", "piece", "id", "‖emb × √d‖", "‖PE‖", "‖X‖"
    );
    for p in &e.pieces {
        let _ = writeln!(
            out,
            "   {:>5}  {:<14} {:>6}  {:>12.2}  {:>6.2}  {:>6.2}",
            p.index, p.piece, p.id, p.embedding_norm, p.positional_norm, p.input_norm
        );
    }
    out.push('\n');
}

fn self_attention(out: &mut String, e: &Explanation) {
    let a = &e.attention;
    let _ = writeln!(
        out,
        "2. Self-attention of {:?} (piece {}) in encoder layer {}, head {} (§3.2.1)",
        a.piece, a.token, a.layer, a.head
    );
    let _ = writeln!(
        out,
        "   Step 1: every piece's row x of the layer's input becomes a query q = x W_Q, a key k = x W_K and a \
         value v = x W_V\n           (each projection with its bias), each d_k = {} wide (for {:?}: ‖x‖ = {:.2}, \
         ‖q‖ = {:.2}).\n   \
         Step 2: score = q · k against every key.   Step 3: divide by √d_k = {:.2}.   Step 4: softmax, so \
         the weights sum to 1.\n   Step 5: weigh each value v by its softmax.   Step 6: add them up: \
         z = Σ softmax · v.\n",
        a.d_k, a.piece, a.input_norm, a.query_norm, a.sqrt_d_k
    );
    let _ = writeln!(
        out,
        "   {:>3}  {:<14} {:>9}  {:>9}  {:>8}  {:>6}  {:>12}",
        "key", "piece", "q · k", "/ √d_k", "softmax", "‖v‖", "‖softmax·v‖"
    );
    for k in &a.keys {
        let _ = writeln!(
            out,
            "   {:>3}  {:<14} {:>9.3}  {:>9.3}  {:>8.4}  {:>6.2}  {:>12.3}",
            k.index, k.piece, k.score, k.scaled, k.weight, k.value_norm, k.contribution_norm
        );
    }
    let top: Vec<String> =
        a.top.iter().map(|k| format!("{} ({:.2} × v, ‖·‖ = {:.2})", k.piece, k.weight, k.contribution_norm)).collect();
    let _ = writeln!(out, "\n   The largest weighted values: {}.", top.join(", "));
    let first: Vec<String> = a.context.iter().take(6).map(|v| format!("{v:.3}")).collect();
    let _ = writeln!(
        out,
        "   z, this head's output for {:?}: {} values, ‖z‖ = {:.2}, starting [{}, …].\n",
        a.piece,
        a.context.len(),
        a.context_norm,
        first.join(", ")
    );
}

fn multi_head(out: &mut String, e: &Explanation) {
    let (h, a) = (&e.heads, &e.attention);
    let _ = writeln!(out, "3. Multi-head attention in encoder layer {} (§3.2.2)", a.layer);
    let _ =
        writeln!(out, "   Each head has its own W_Q, W_K and W_V, and looks at different pieces. For {:?}:", a.piece);
    for f in &h.heads {
        let _ = writeln!(
            out,
            "   head {}: most attention on {:?} (piece {}, weight {:.3})",
            f.head, f.piece, f.index, f.weight
        );
    }
    let _ = writeln!(
        out,
        "   The {} heads' outputs z are concatenated, Concat(head_0, …): ({} × {}), and multiplied by W_O ({} × {}):\n   \
         MultiHead(X) ({} × {}). For {:?}: ‖Concat‖ = {:.2}, ‖MultiHead‖ = {:.2}.\n",
        h.heads.len(),
        h.concat_shape[0],
        h.concat_shape[1],
        h.w_o_shape[0],
        h.w_o_shape[1],
        h.output_shape[0],
        h.output_shape[1],
        a.piece,
        h.concat_norm,
        h.output_norm
    );
}

fn residual_line(out: &mut String, name: &str, r: &Residual, norm: Norm) {
    let (sub, out_name) = match norm {
        Norm::Post => (format!("{name}(x)"), format!("LayerNorm(x + {name}(x))")),
        Norm::Pre => (format!("{name}(LayerNorm(x))"), "the output".to_string()),
    };
    let _ = writeln!(
        out,
        "   ‖x‖ = {:.2}, ‖{sub}‖ = {:.2}, residual ‖x + {sub}‖ = {:.2}, ‖{out_name}‖ = {:.2}",
        r.input_norm, r.sublayer_output_norm, r.residual_norm, r.output_norm
    );
}

fn sublayers(out: &mut String, e: &Explanation) {
    let s: &Sublayers = &e.sublayers;
    let piece = &e.attention.piece;
    let _ = writeln!(out, "4. Residual connections, LayerNorm and the feed-forward network (§3.1, §3.3)");
    let _ = writeln!(out, "   Around the self-attention, for {piece:?}:");
    residual_line(out, "MultiHead", &s.attention, s.norm);
    let _ = writeln!(
        out,
        "   FFN(x) = max(0, x W₁ + b₁) W₂ + b₂: ({} × {}) × W₁ ({} × {}) → ReLU ({} × {}) → × W₂ ({} × {}) → ({} × {}).",
        s.hidden_shape[0],
        s.w_1_shape[0],
        s.w_1_shape[0],
        s.w_1_shape[1],
        s.hidden_shape[0],
        s.hidden_shape[1],
        s.w_2_shape[0],
        s.w_2_shape[1],
        s.hidden_shape[0],
        s.w_2_shape[1]
    );
    let _ = writeln!(
        out,
        "   For {piece:?}, {} of the {} hidden units are positive after the ReLU.",
        s.active_units, s.w_1_shape[1]
    );
    let _ = writeln!(out, "   Around the feed-forward network:");
    residual_line(out, "FFN", &s.ffn, s.norm);
    out.push('\n');
}

fn decoding(out: &mut String, e: &Explanation) {
    let d = &e.decoding;
    let layer = d.steps.first().map_or(0, |s| s.source.layer);
    let _ = writeln!(out, "5. Decoding, greedily (§3.1, §3.4)");
    let _ = writeln!(
        out,
        "   Each step feeds <s> and the pieces chosen so far through the decoder (masked self-attention, then \
         attention over the\n   encoder's output); the final linear layer and softmax give every piece a \
         probability, and the most probable is chosen.\n   \"looks at\": the source piece the encoder-decoder \
         attention of decoder layer {layer} weighs most (averaged over its heads).\n"
    );
    let width = |f: &dyn Fn(&super::decoder::Step) -> usize| d.steps.iter().map(f).max().unwrap_or(0);
    let reads = width(&|s| s.input.chars().count()).max(5);
    let looks = width(&|s| s.source.piece.chars().count() + 7).max(8);
    let _ = writeln!(
        out,
        "   {:>4}  {:<reads$}  {:<looks$}  next piece (probability), the first is chosen",
        "step", "reads", "looks at"
    );
    for s in &d.steps {
        let c: Vec<String> =
            s.candidates.iter().map(|c| format!("{} {}", c.piece, probability(c.probability))).collect();
        let source = format!("{} ({:.2})", s.source.piece, s.source.weight);
        let _ = writeln!(out, "   {:>4}  {:<reads$}  {:<looks$}  {}", s.step, s.input, source, c.join(" | "));
    }
    let _ = writeln!(out, "\n   Translation: {}", d.translation);
}

/// Three decimals, or two significant digits for what would print as 0.000.
fn probability(p: f32) -> String {
    if p >= 0.0005 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}
