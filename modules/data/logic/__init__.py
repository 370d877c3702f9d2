"""Propositional-logic reasoning data: generator, renderings, parser, independent solver."""
from modules.data.logic.dataset import (COLUMNS, SCHEMA, few_shot_prompts, generate_flip_pairs, generate_splits,
                                        problem_row, read_split, renderings, write_splits)
from modules.data.logic.generator import MAX_DEPTH, MIN_DEPTH, Problem, check_params, sample_problem
from modules.data.logic.solver import answers_agree, check_answer, solve, solve_compact, solve_natural
from modules.data.logic.syntax import (VOCAB, Rule, Statement, compact_answer, compact_prompt, few_shot_prompt,
                                       natural_answer, natural_prompt, parse_answer, parse_compact_answer,
                                       parse_compact_prompt, parse_natural_answer, parse_natural_prompt,
                                       parse_prompt)
