"""The language: the AST, the parser (grammar/nldsl.lark is its reference), the canonical
printer, syntax errors, the vocabulary table of built-ins and constant evaluation."""
