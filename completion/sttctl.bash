# bash completion for sttctl(1), the client of sttd.                  -*- shell-script -*-
#
# Plain bash: needs no bash-completion package. Install by copying to
# ~/.local/share/bash-completion/completions/sttctl (loaded on demand by
# bash-completion), or source it from ~/.bashrc.

_sttctl_commands="start stop toggle cancel send purge undo status lang enable disable listen devices shortcuts hold shape model"

# ISO-639-1 codes, the languages `sttctl lang` accepts ('' means automatic).
_sttctl_languages="
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs
    cu cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha
    he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn
    ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb
    nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd
    se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw
    ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
"

_sttctl() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    local prev=${COMP_WORDS[COMP_CWORD - 1]}
    local command="" word i args=0 json=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ -z $command ]]; then
            [[ $word == -* ]] || command=$word
        elif [[ $word == --json ]]; then
            json=1
        elif [[ $word != -* ]]; then
            args=$((args + 1))
        fi
    done

    local words=""
    if [[ -n $command && $prev == --lang ]]; then
        words="$_sttctl_languages"
    elif [[ -n $command && $prev == --config ]]; then
        COMPREPLY=()
        local IFS=$'\n'
        # shellcheck disable=SC2207  # one file name per line
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    elif [[ -n $command && $prev == --profile ]]; then
        words=""
    else
    case $command in
        "")
            words="$_sttctl_commands"
            [[ $cur == -* ]] && words="--help --version" ;;
        status | listen)
            ((json)) || words="--json"
            [[ $cur == -* ]] && words+=" --help" ;;
        lang)
            ((args)) || words="$_sttctl_languages"
            [[ $cur == -* ]] && words="--help" ;;
        start | toggle)
            [[ $cur == -* ]] && words="--profile --lang --help" ;;
        shape)
            [[ $cur == -* ]] && words="--config --profile --lang --help" ;;
        model)
            # sttctl model download [MODEL] | list (a model name is free text: no candidates)
            ((args)) || words="download list"
            [[ $cur == -* ]] && words="--help" ;;
        *)
            [[ $cur == -* ]] && words="--help" ;;
    esac
    fi
    COMPREPLY=()
    local IFS=$'\n'
    # shellcheck disable=SC2207  # one candidate per line; none contains a newline
    COMPREPLY=($(IFS=$' \t\n' compgen -W "$words" -- "$cur"))
}

complete -F _sttctl sttctl
