    # Remove-VM deletes the virtual machine's configuration, never its
    # virtual hard disk files.
    $vm = Get-VM -Id $p.id
    Remove-VM -VM $vm -Force
    Out-FerryResult @{ removed = $p.id }
