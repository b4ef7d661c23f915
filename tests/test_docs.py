"""The documentation is tested: every command in README.md and docs/*.md that runs one of the
repo's scripts uses only flags that script's parser has, every relative link and anchor
resolves, and the quick-start demo runs (fewer epochs)."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', REPO / 'data' / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
PYTHONS = {'python', 'python3', 'python3.11'}
# Scripts of other projects that the pages tell users to run in those projects' folders.
FOREIGN_SCRIPTS = {'setup.py'}

# Run in a fresh interpreter: executes each script as __main__ with parse_args replaced by a
# capture of the parser, so the flags are exactly the parser's, and no script body runs.
_CAPTURE_FLAGS = r'''
import argparse, json, os, runpy, sys
class Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser
def capture(self, *args, **kwargs):
    raise Captured(self)
argparse.ArgumentParser.parse_args = capture
argparse.ArgumentParser.parse_known_args = capture
flags = {}
for script in sys.argv[1:]:
    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` has it
    try:
        runpy.run_path(script, run_name='__main__')
    except Captured as captured:
        flags[script] = sorted(captured.parser._option_string_actions)
    else:
        flags[script] = None  # no parser: the script takes no flags
print('FLAGS', json.dumps(flags))
'''


def markdown_parts(path):
    """(prose, code lines of the fenced blocks) of a markdown file; a line ending in a
    backslash continues on the next."""
    prose, code, fence = [], [], False
    for line in path.read_text().split('\n'):
        if line.startswith('```'):
            fence = not fence
            continue
        (code if fence else prose).append(line)
    code_text = re.sub(r'\\\n\s*', ' ', '\n'.join(code))
    return '\n'.join(prose), code_text.split('\n')


def documented_commands():
    """[(page, command text)] of the shell commands in the pages: fenced lines and inline code
    spans (which may wrap over lines) that run a .py file."""
    commands = []
    for page in PAGES:
        prose, code_lines = markdown_parts(page)
        spans = [span.replace('\n', ' ') for span in re.findall(r'`([^`]+)`', prose)]
        for text in [*code_lines, *spans]:
            for part in re.split(r'&&|;|\|', text):
                if re.search(r'\S+\.py\b', part) and re.match(r'\s*(python\S*|torchrun)\s', part):
                    commands.append((page.relative_to(REPO), part.strip()))
    return commands


def script_and_flags(command):
    """(script path, [flags]) of 'python X.py --a 1 --b' or 'torchrun ... X.py ...'."""
    tokens = shlex.split(command, comments=True)
    script_index = next(i for i, token in enumerate(tokens) if token.endswith('.py'))
    flags = [token.split('=')[0] for token in tokens[script_index + 1:]
             if re.match(r'-[A-Za-z-]', token)]
    return tokens[script_index], flags


@pytest.fixture(scope='module')
def parser_flags():
    scripts = sorted({script_and_flags(command)[0] for _, command in documented_commands()} - FOREIGN_SCRIPTS)
    missing = [script for script in scripts if not (REPO / script).is_file()]
    assert not missing, f'the documentation runs scripts that do not exist: {missing}'
    # bench_search.py re-executes itself unless glibc's mmap threshold is set: set it.
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072'}
    result = subprocess.run([sys.executable, '-c', _CAPTURE_FLAGS, *scripts], cwd=REPO, capture_output=True,
                            text=True, check=True, env=env, timeout=300)
    return json.loads(result.stdout.split('FLAGS ')[-1])  # after what scripts print on import


def test_documented_commands_use_existing_flags(parser_flags):
    commands = documented_commands()
    assert len(commands) > 40  # the pages document dozens of commands: the extraction works
    wrong = []
    for page, command in commands:
        script, flags = script_and_flags(command)
        if script in FOREIGN_SCRIPTS:
            continue
        known = parser_flags[script] or []
        wrong += [f'{page}: {script} has no flag {flag} (in: {command})' for flag in flags if flag not in known]
    assert not wrong, '\n'.join(wrong)


def github_anchor(heading, seen):
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' removed,
    spaces to '-', '-1', '-2' ... for repeats."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().replace('`', '').lower()).replace(' ', '-')
    count = seen.get(text, 0)
    seen[text] = count + 1
    return text if count == 0 else f'{text}-{count}'


def anchors(path):
    prose, _ = markdown_parts(path)
    seen = {}
    return {github_anchor(match, seen) for match in re.findall(r'^#{1,6} (.+)$', prose, flags=re.M)}


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        prose, _ = markdown_parts(page)
        for target in re.findall(r'\]\(([^)\s]+)\)', prose):
            if re.match(r'[a-z]+:', target):
                continue  # http(s), mailto
            path_part, _, anchor = target.partition('#')
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f'{page.relative_to(REPO)}: {target} (no such file)')
            elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
                broken.append(f'{page.relative_to(REPO)}: {target} (no such heading)')
    assert not broken, '\n'.join(broken)


def test_flag_check_fails_on_a_removed_flag(parser_flags):
    """The check above is only worth something if a documented flag that a script lacks fails."""
    script, flags = script_and_flags('python train_img_model_xent.py -d market1501 --no-such-flag 3')
    assert script == 'train_img_model_xent.py' and flags == ['-d', '--no-such-flag']
    assert '-d' in parser_flags[script] and '--no-such-flag' not in parser_flags[script]


def test_quick_start_demo_runs(tmp_path):
    """The README's demo command, as printed there, with 1 epoch instead of 20."""
    prose, code_lines = markdown_parts(REPO / 'README.md')
    demo = next(line for line in code_lines if line.startswith('python synthetic_data.py'))
    assert '--max-epoch 20 --eval-step 10' in demo
    demo = demo.replace('--max-epoch 20 --eval-step 10', '--max-epoch 1 --eval-step 1')
    demo = demo.replace('data/synthetic', str(tmp_path / 'synthetic')).replace('log/demo', str(tmp_path / 'demo'))
    result = subprocess.run(demo, shell=True, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, 'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}'})
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r'mAP: \d+\.\d%', result.stdout) and 'Rank-1' in result.stdout
    assert (tmp_path / 'demo' / 'checkpoint_last.pth.tar').is_file()
