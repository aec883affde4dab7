"""The ways a word weight can act, with the one-line meaning the UI, the CLI help and the docs show (no torch here,
so the CLI's help and the pages can list them without loading a model library)."""

WEIGHT_METHODS = {
    "score": "PromptCharm-style: scales the word's attention scores before softmax",
    "prob": "Prompt-to-Prompt-style: scales the word's attention probabilities after softmax",
    "embed": "Compel-style: interpolates the word's embedding away from the empty prompt's",
    "a1111": "A1111 'Original' emphasis: multiplies token embeddings, restores the mean",
}
WEIGHT_MODES = tuple(WEIGHT_METHODS)
